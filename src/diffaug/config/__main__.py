"""`python -m diffaug.config > params.schema.json`: the JSON schema editors check params.yaml with, from the models."""
import json

from diffaug.config import Config

print(json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema", **Config.model_json_schema()}, indent=1))
