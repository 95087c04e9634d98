# Sourced by scripts/test.sh and benches/compare.sh: creates a Python venv for a
# tool from PyPI, with a Python that can make venvs (pyenv's on this image,
# else the system's).

# install_venv DIR PACKAGES PYTHON_GLOB: e.g. install_venv V buildgrid '3.13*'
# (PACKAGES: one or more, space-separated)
# (BuildGrid needs 3.13: on 3.11 pip silently picks an old 0.4 release).
install_venv() {
    local dir=$1 package=$2 want=$3 python="" candidate
    for candidate in "$(pyenv root 2>/dev/null)"/versions/$want/bin/python3 \
        "$HOME"/.pyenv/versions/$want/bin/python3 "$(command -v "python${want%\*}" 2>/dev/null)"; do
        if [ -x "$candidate" ] && "$candidate" -c "import venv, ensurepip" 2>/dev/null; then
            python=$candidate
            break
        fi
    done
    if [ -z "$python" ]; then
        echo "installing $package needs Python $want with venv support; none found" >&2
        exit 1
    fi
    "$python" -m venv "$dir"
    # shellcheck disable=SC2086 # several packages may be given, space-separated
    "$dir/bin/pip" install --quiet --disable-pip-version-check $package
}
