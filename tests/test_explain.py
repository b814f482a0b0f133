"""`clinpeft explain`: sentence occlusion finds a planted keyword; the page is self-contained and exact."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from clinpeft.evaluation.attribution import occlusion, split_sentences, top_phrases

FILLER = ["Patient admitted from the emergency department.", "Vital signs stable on arrival.",
          "Chest x-ray showed no acute process.", "Home medications were continued.",
          "Family at bedside and updated.", "Pain controlled with acetaminophen.",
          "Ambulating with assistance.", "Tolerating a regular diet.", "Labs notable for mild anemia.",
          "Seen by physical therapy."]
KEYWORD = "Exam notable for zorblax rash on both arms."


def keyword_task(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Notes of 4-6 filler sentences; label 1 exactly when the keyword sentence is planted (at a random place)."""
    rng = np.random.default_rng(seed)
    texts, y = [], rng.integers(0, 2, n)
    for label in y:
        sentences = list(rng.choice(FILLER, size=int(rng.integers(4, 7)), replace=False))
        if label:
            sentences.insert(int(rng.integers(0, len(sentences) + 1)), KEYWORD)
        texts.append(" ".join(sentences))
    return texts, y


def test_split_sentences_covers_the_text():
    text = "CHIEF COMPLAINT: chest pain\n\nHPI: 60M. Pain began at rest!  Worse on exertion?"
    spans = split_sentences(text)
    assert [text[a:b] for a, b in spans] == ["CHIEF COMPLAINT: chest pain", "HPI: 60M.", "Pain began at rest!",
                                             "Worse on exertion?"]


def test_occlusion_gives_the_planted_keyword_sentence_the_largest_attribution():
    train_texts, train_y = keyword_task(300, 0)
    vectorizer = TfidfVectorizer().fit(train_texts)
    model = LogisticRegression(C=10.0, max_iter=1000).fit(vectorizer.transform(train_texts), train_y)

    def score(texts):
        return model.predict_proba(vectorizer.transform(texts))

    texts, y = keyword_task(30, 1)
    notes = occlusion(texts, score, batch_notes=7)
    positives = [i for i in range(len(texts)) if y[i] == 1]
    assert positives
    for i in positives:
        note = notes[i]
        best = int(note.attributions[:, 1].argmax())
        a, b = note.spans[best]
        assert texts[i][a:b] == KEYWORD  # the keyword's sentence pushes class 1 up the most
        assert note.attributions[best, 1] > 0.2
        # exact definition: P(full) - P(without the sentence)
        without = (texts[i][:a] + texts[i][b:]).strip()
        assert note.attributions[best, 1] == pytest.approx(score([texts[i]])[0, 1] - score([without])[0, 1])
    phrases = top_phrases(texts, notes, ["0", "1"])
    assert phrases["1"][0]["phrase"] == KEYWORD.lower() and phrases["1"][0]["notes"] == len(positives)


@pytest.mark.slow
def test_explain_command_on_a_finetuned_run(tiny_llama, tmp_path, capsys):
    from clinpeft.cli import main
    from clinpeft.config import FinetuneConfig, load_config
    from clinpeft.recipes import finetune

    texts, y = keyword_task(60, 2)
    task = tmp_path / "task"
    task.mkdir()
    for split, part in (("train", slice(0, 36)), ("val", slice(36, 48)), ("test", slice(48, 60))):
        pd.DataFrame({"id": [f"n{i}" for i in range(60)][part], "text": texts[part],
                      "label": y[part].astype(str)}).to_csv(task / f"{split}.csv", index=False)
    (task / "labels.txt").write_text("0\n1\n")
    # notes longer than 32 tokens, read in chunks: explain must score them as the run does
    config = load_config(FinetuneConfig, None, [f"model.base={tiny_llama}", f"task.path={task}", "variant=head",
                                                "task.max_seq_len=32", "task.long_notes=chunks",
                                                "task.chunk_stride=8", "task.max_chunks=8", "train.epochs=1",
                                                "eval.bootstrap_resamples=0"])
    finetune.main(config, tmp_path / "run", progress=False)
    out = tmp_path / "explain"
    assert main(["explain", str(tmp_path / "run"), "--notes", str(task / "test.csv"), "--out", str(out),
                 "--max-notes", "5", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "zorblax" not in printed and "5 notes explained" in printed  # no note text on the console
    page = (out / "index.html").read_text()
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")  # nothing loaded from anywhere
    assert len(re.findall(r"<h3>Note n\d+</h3>", page)) == 5
    record = json.loads((out / "attributions.json").read_text())
    note = record["notes"][0]
    assert len(note["attributions"]) == len(note["spans"]) and len(note["probs"]) == 2
    own = pd.read_csv(tmp_path / "run" / "predictions.csv", dtype={"id": str}).set_index("id")
    explained = np.array([n["probs"] for n in record["notes"]])
    np.testing.assert_allclose(explained, own.loc[[n["id"] for n in record["notes"]], ["p_0", "p_1"]], atol=1e-5)
