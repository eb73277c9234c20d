"""Files and inputs: attention records, model fingerprints, atomic writes, prompts."""
