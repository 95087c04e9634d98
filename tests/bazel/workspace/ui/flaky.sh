#!/bin/sh
marker="${KILN_FLAKY_MARKER:?set KILN_FLAKY_MARKER with --test_env}"
if [ -e "$marker" ]; then
    echo "second attempt: passing"
    exit 0
fi
: > "$marker" || exit 2
echo "first attempt: failing on purpose"
exit 1
