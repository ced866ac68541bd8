import json

import pytest
import torch
from medsae.naming import (
    LabelNamer,
    NamingError,
    VLMNamer,
    evaluate_names,
    evaluation_images,
    name_latents,
    naming_images,
    parse_labels,
    parse_name,
    precision_recall_f1,
)

GOOD = '{"concept": "left pleural effusion with blunted angle", "description": "Fluid at the left base."}'


@pytest.mark.parametrize(
    "text",
    [GOOD, f"Sure! Here it is:\n```json\n{GOOD}\n```", f"{{not json}} then {GOOD} and {{}}"],
)
def test_parse_name_accepts_json_in_prose_or_fences(text):
    name = parse_name(text)
    assert name.concept == "left pleural effusion with blunted angle" and name.description == "Fluid at the left base."


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("I think it is effusion.", "no JSON object"),
        ('{"concept": "effusion at the left base"', "no JSON object"),  # truncated by max_new_tokens
        ('{"concept": "a b c d e", "description": ""}', "description"),
        ('{"description": "x"}', "concept"),
        ('{"concept": 7, "description": "x"}', "concept"),
        ('{"concept": "effusion", "description": "x"}', "1 words"),
        (json.dumps({"concept": " ".join(["w"] * 20), "description": "x"}), "20 words"),
    ],
)
def test_parse_name_rejects_malformed_answers_clearly(text, why):
    with pytest.raises(NamingError, match=why):
        parse_name(text)


def test_parse_labels():
    assert parse_labels("Answer: [1, 0, true, false, 1]", 5) == [1, 0, 1, 0, 1]
    for text, why in [("[1, 0]", "expected 5"), ("[1, 0, 2, 0, 1]", "0 or 1"), ("yes no yes", "no JSON list")]:
        with pytest.raises(NamingError, match=why):
            parse_labels(text, 5)


class ScriptedChat:
    """A chat backend that replays canned answers and records what it was asked."""

    def __init__(self, answers):
        self.answers, self.calls = list(answers), []

    def __call__(self, messages):
        self.calls.append(messages)
        return self.answers.pop(0)


def test_vlm_namer_retries_with_the_error_and_then_succeeds():
    chat = ScriptedChat(["no idea", GOOD])
    namer = VLMNamer(chat, max_tries=3)
    name = namer.name(torch.rand(4, 1, 8, 8), reports=["small left effusion"])
    assert name.concept.startswith("left pleural effusion")
    first, second = chat.calls
    assert first[0]["content"][0]["text"] == "You are an expert radiologist."
    assert sum(part["type"] == "image" for part in first[1]["content"]) == 4
    assert "small left effusion" in first[1]["content"][-1]["text"]
    assert "no JSON object" in second[-1]["content"][0]["text"]  # the retry says what was wrong


def test_vlm_namer_gives_up_after_bounded_retries():
    chat = ScriptedChat(["nope"] * 5)
    with pytest.raises(NamingError, match="after 2 tries"):
        VLMNamer(chat, max_tries=2).name(torch.rand(2, 1, 8, 8))
    assert len(chat.calls) == 2


def test_vlm_classify_sends_five_images_per_prompt():
    chat = ScriptedChat(["[1,1,0,0,1]", "[0,1,0,0,0]", "[1,0]"])
    out = VLMNamer(chat).classify(torch.rand(12, 1, 8, 8), "left pleural effusion")
    assert out == [1, 1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0]
    assert [sum(p["type"] == "image" for p in c[1]["content"]) for c in chat.calls] == [5, 5, 2]


def test_naming_image_selection_rule():
    a = torch.zeros(200)
    a[:90] = torch.arange(90, 0, -1).float()  # L0 = 90, top L0 - L0 // 3 = 60 images: indices 0..59
    idx = naming_images(a, seed=1)
    assert sorted(idx.tolist()) == list(range(15)) + list(range(45, 60))
    assert idx.tolist() != sorted(idx.tolist())  # shuffled
    small = torch.zeros(50)
    small[:9] = 1.0 + torch.arange(9).float()  # L0 = 9 -> top 6, fewer than 30: all of them
    assert len(naming_images(small)) == 6


def test_evaluation_images_and_scores():
    a = torch.zeros(100)
    a[:40] = torch.rand(40) + 0.1
    idx, truth = evaluation_images(a)
    assert len(idx) == 60 and truth.sum() == 30
    assert torch.all(a[idx[truth == 1]] > 1e-7) and torch.all(a[idx[truth == 0]] <= 1e-7)
    assert set(idx[truth == 1].tolist()) == set(a.argsort(descending=True)[:30].tolist())
    assert precision_recall_f1([1, 1, 0, 0], [1, 0, 1, 0]) == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert precision_recall_f1([0, 0], [0, 0]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_label_namer_names_over_represented_findings_and_classifies_by_them():
    names = ["effusion", "nodule", "wide_mediastinum"]
    namer = LabelNamer(names, prevalence=torch.tensor([0.2, 0.2, 0.2]))
    shown = torch.tensor([[1, 0, 1], [1, 0, 1], [1, 1, 1], [1, 0, 0]]).float()
    name = namer.name(torch.zeros(4, 1, 4, 4), shown)
    assert "effusion" in name.concept and "wide mediastinum" in name.concept and "nodule" not in name.concept
    test = torch.tensor([[1, 0, 1], [1, 0, 0], [0, 0, 1], [1, 1, 1]]).float()
    assert namer.classify(None, name.concept, test) == [1, 0, 0, 1]
    healthy = namer.name(None, torch.zeros(5, 3))
    assert "no finding" in healthy.concept
    assert namer.classify(None, healthy.concept, test[:2].clone().fill_(0)) == [1, 1]


def test_protocol_names_and_evaluates_a_planted_latent():
    gen = torch.Generator().manual_seed(0)
    labels = (torch.rand(400, 3, generator=gen) < 0.2).float()
    acts = torch.stack([labels[:, 1] * (1 + torch.rand(400, generator=gen)), torch.rand(400, generator=gen)], 1)
    namer = LabelNamer(["effusion", "nodule", "edema"], labels.mean(0))
    names = name_latents(acts, [0, 1], namer, lambda idx: torch.zeros(len(idx), 1, 2, 2), labels)
    assert "nodule" in names[0].concept
    scores = evaluate_names(acts, {0: names[0]}, namer, lambda idx: torch.zeros(len(idx), 1, 2, 2), labels)
    assert scores[0]["f1"] == pytest.approx(1.0)


def test_transformers_chat_is_greedy_and_returns_only_the_new_tokens():
    from medsae.naming import TransformersChat

    calls = {}

    class Inputs(dict):
        def to(self, device):
            calls["device"] = device
            return self

    class Processor:
        def apply_chat_template(self, messages, **kwargs):
            calls["template"] = (messages, kwargs)
            return Inputs(input_ids=torch.tensor([[11, 12, 13]]))

        def decode(self, tokens, skip_special_tokens):
            return " ".join(str(t) for t in tokens.tolist())

    class Model:
        def generate(self, **kwargs):
            calls["generate"] = kwargs
            return torch.tensor([[11, 12, 13, 42, 43]])  # the prompt, then the answer

    chat = TransformersChat("local/tiny", max_new_tokens=7, device="cpu")
    chat.processor, chat.model = Processor(), Model()  # stand-ins for the hub model: no download
    messages = VLMNamer._messages(torch.rand(2, 1, 8, 8), "name it")
    assert chat(messages) == "42 43"
    assert calls["generate"]["do_sample"] is False and calls["generate"]["max_new_tokens"] == 7
    assert calls["template"][1]["add_generation_prompt"] is True and calls["device"] == "cpu"
    assert [p["type"] for p in calls["template"][0][1]["content"]] == ["image", "image", "text"]
