"""`python -m diffaug.config --schema > params.schema.json`: the JSON schema editors check params.yaml with."""
import argparse
import json

from diffaug.config import json_schema

parser = argparse.ArgumentParser(prog="python -m diffaug.config", description=__doc__)
parser.add_argument("--schema", action="store_true", required=True, help="print params.yaml's JSON schema")
parser.parse_args()
print(json.dumps(json_schema(), indent=1))
