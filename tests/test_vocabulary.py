"""Labels the model never learned are named: one warning line (CLI), a Python warning (API), a flag
per label in --json (issue 18 item 3). The default checkpoint lists its 50 training words."""

from __future__ import annotations

import json
import warnings

from conftest import REPO, run_vlm

from vlm.trust.vocabulary import UnseenWordsWarning, check_label_words

WORDS = ["a", "red", "star", "one", "picture", "of", "orange", "blue", "triangle"]


def test_unseen_label_and_template_words_are_found_once():
    check = check_label_words(["red star", "Zebra", "zebra star", "BLUE triangle"],
                              ["one {}", "a photo of a {}", "a {} photo"], WORDS)
    assert check.unseen == (False, True, True, False)
    assert check.words == ("zebra", "photo")  # each once, case folded; the "{}" slot is no word
    assert check_label_words(["zebra"], ["one {}"], None) is None  # no list: nothing is claimed
    assert check_label_words(["red star"], ["a picture of one {}"], WORDS).words == ()


def test_the_api_warns_once_naming_the_words():
    import vlm

    pipe = vlm.load()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe.label_embeddings(["red star", "zebra", "giraffe"], ["one {}", "a photo of one {}"])
        pipe.label_embeddings(["red star", "blue triangle"])
    unseen = [w.message for w in caught if isinstance(w.message, UnseenWordsWarning)]
    assert len(unseen) == 1 and unseen[0].words == ("zebra", "giraffe", "photo")
    assert "'zebra', 'giraffe', 'photo'" in str(unseen[0])
    assert pipe.label_words(["zebra", "red star"]).unseen == (True, False)


def test_the_cli_names_unseen_labels_in_one_line_and_flags_them_in_json():
    examples = sorted(str(p) for p in (REPO / "examples").glob("*.png"))
    r = run_vlm("classify", *examples, "--labels", "red star,orange star,blue triangle,zebra", "--json")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vlm classify: warning: ") and "'zebra'" in lines[0], r.stderr
    for line in r.stdout.splitlines():
        for entry in json.loads(line)["top"]:
            assert entry["unseen"] is (entry["label"] == "zebra")
    ok = run_vlm("classify", examples[0], "--labels", "red star,blue triangle")
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
