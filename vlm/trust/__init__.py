"""What a model can vouch for: images far from its training data, words it never learned.

    ood.py         an out-of-distribution profile stored beside a checkpoint, checked on every image
    vocabulary.py  label and template words outside the checkpoint's training words: one warning, a flag per label
"""
