"""Files and inputs: attention records, model fingerprints, atomic writes, prompts, and the split
of inputs over torchrun's ranks with the merge of their results."""
