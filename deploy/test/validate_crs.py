"""Validates custom resources against CRD schemas offline, strictly: an
unknown field is an error (as `kubectl apply --validate=strict` makes it),
as is a missing required field or a wrong type.

    validate_crs.py CRD.yaml[,CRD.yaml...] RESOURCES.yaml

Resources whose kind no given CRD defines are skipped (reported); the run
fails when any resource of a given kind is invalid, or none was found.
"""

import sys

import jsonschema
import yaml


def strict(schema):
    """The schema with unknown properties refused wherever it lists them."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def main():
    crds, resources = sys.argv[1].split(","), sys.argv[2]
    schemas = {}
    for path in crds:
        crd = yaml.safe_load(open(path))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            schemas[(f"{group}/{v['name']}", kind)] = strict(v["schema"]["openAPIV3Schema"])
    checked, bad = 0, []
    for doc in yaml.safe_load_all(open(resources)):
        if not doc:
            continue
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key not in schemas:
            print(f"skipped {key[1]} {doc['metadata']['name']} ({key[0]}): no CRD given")
            continue
        checked += 1
        for e in jsonschema.Draft7Validator(schemas[key]).iter_errors(doc):
            bad.append(f"{key[1]} {doc['metadata']['name']}: {'/'.join(map(str, e.path))}: {e.message}")
    for b in bad:
        print("ERROR", b)
    if bad or checked == 0:
        sys.exit(f"{len(bad)} errors in {checked} custom resources")
    print(f"{checked} custom resources valid")


if __name__ == "__main__":
    main()
