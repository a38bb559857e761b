"""`python -m diffaug.config --schema > params.schema.json`: the JSON schema editors check params.yaml with."""
import argparse
import json

from diffaug.config import Config

parser = argparse.ArgumentParser(prog="python -m diffaug.config", description=__doc__)
parser.add_argument("--schema", action="store_true", required=True, help="print params.yaml's JSON schema")
parser.parse_args()
print(json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema", **Config.model_json_schema()}, indent=1))
