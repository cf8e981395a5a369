"""What a model can vouch for: images far from its training data, words it never learned.

    ood.py         an out-of-distribution profile stored beside a checkpoint, checked on every image
    results.py     API results (a caption, top labels) that carry each image's ood flag
    families.py    images that are not shapes scenes, made here or shipped in packages: what ood is validated on
    vocabulary.py  label and template words outside the checkpoint's training words: one warning, a flag per label
"""
