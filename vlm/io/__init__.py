"""Input and output: images, checkpoints, config files, atomic writes.

    images.py      load_image (every format, one-line errors), open_clip-exact preprocessing
    batches.py     reading images batch by batch with the on_error rule (shared by every pipeline)
    checkpoint.py  save_pretrained / load_pretrained: config.json, model.safetensors, tokenizer files
    configio.py    the one config loader: strict keys, dotted overrides, errors naming file and key
    atomic.py      files and directories written under a temporary name, fsynced, renamed
"""
