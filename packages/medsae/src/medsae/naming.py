"""Neuron naming by a vision-language model, and the naming evaluation that uses the same model as a classifier.

Protocol (paper): for each alive latent with L0 > 60, show the top-activating images (the first 15 and the last 15 of
its top ``L0 - L0 // 3``, shuffled) to MedGemma with the system prompt "You are an expert radiologist." and ask for
``{"concept": 5-10 words, "description": ...}``. To evaluate a name, show 30 top-activating and 30 non-activating
(activation <= 1e-7) images, 5 per prompt, ask which show the concept (a JSON list of 0/1), and score
precision/recall/F1 against the binarised activations.

``NeuronNamer`` is the interface. ``VLMNamer`` talks to any chat backend (``TransformersChat`` runs a transformers
image-text-to-text model such as ``google/medgemma-4b-it``); ``LabelNamer`` is the offline procedure: it names a latent
from the ground-truth findings that are over-represented among the images it is shown, and classifies an image by
whether it carries the findings a concept names. Both answer in the same JSON and go through the same strict parser.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

SYSTEM_PROMPT = "You are an expert radiologist."
NAMING_PROMPT = (
    "The {n} chest X-rays above are the images that most strongly activate one feature of an image model{reports}. "
    "Identify the single radiological concept they have in common. Answer with only a JSON object of the form "
    '{{"concept": "<a 5-10 word summary>", "description": "<one or two sentences>"}}.'
)
CLASSIFY_PROMPT = (
    'Concept: "{concept}". For each of the {n} chest X-rays above, in order, answer 1 if it shows this concept and 0 '
    "if it does not. Answer with only a JSON list of {n} integers."
)
RETRY_PROMPT = "Your answer could not be used: {error}. Answer again with only the requested JSON."

Chat = Callable[[list[dict]], str]


class NamingError(ValueError):
    """A model answer that is not the JSON asked for (after the allowed retries)."""


@dataclass(frozen=True)
class NeuronName:
    """A latent's name: a short ``concept`` and a longer ``description``."""

    concept: str
    description: str


# --------------------------------------------------------------------------------------------------- parsing
def _json_values(text: str, opener: str) -> list:
    """Every JSON value starting at an ``opener`` character of ``text`` (code fences and prose around it allowed)."""
    decoder, found = json.JSONDecoder(), []
    for match in re.finditer(re.escape(opener), text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        found.append(value)
    return found


def parse_name(text: str, min_words: int = 3, max_words: int = 12) -> NeuronName:
    """Parse ``{"concept": ..., "description": ...}`` out of a model answer.

    Args:
        text: The model's answer.
        min_words: Fewest words accepted in ``concept`` (the prompt asks for 5-10; a little slack).
        max_words: Most words accepted in ``concept``.

    Raises:
        NamingError: No such object, missing/empty fields, or a concept of the wrong length.
    """
    objects = [v for v in _json_values(text, "{") if isinstance(v, dict)]
    if not objects:
        raise NamingError(f"no JSON object in the answer {text[:120]!r}")
    obj = objects[0]
    concept, description = obj.get("concept"), obj.get("description")
    if not isinstance(concept, str) or not concept.strip():
        raise NamingError(f"'concept' missing or not a non-empty string in {obj!r}")
    if not isinstance(description, str) or not description.strip():
        raise NamingError(f"'description' missing or not a non-empty string in {obj!r}")
    words = len(concept.split())
    if not min_words <= words <= max_words:
        raise NamingError(f"'concept' has {words} words, expected {min_words}-{max_words}: {concept!r}")
    return NeuronName(concept.strip(), description.strip())


def parse_labels(text: str, n: int) -> list[int]:
    """Parse a JSON list of ``n`` zeros and ones (booleans accepted) out of a model answer.

    Raises:
        NamingError: No list, a list of the wrong length, or values other than 0/1.
    """
    lists = [v for v in _json_values(text, "[") if isinstance(v, list)]
    if not lists:
        raise NamingError(f"no JSON list in the answer {text[:120]!r}")
    values = lists[0]
    if len(values) != n:
        raise NamingError(f"expected {n} labels, got {len(values)}: {values!r}")
    if not all(v in (0, 1) for v in values):  # True == 1 and False == 0 in Python
        raise NamingError(f"labels must be 0 or 1, got {values!r}")
    return [int(v) for v in values]


def ask(chat: Chat, messages: list[dict], parse: Callable[[str], object], max_tries: int = 3):
    """Send ``messages``; on an unusable answer, tell the model what was wrong and ask again, ``max_tries`` in all.

    Greedy decoding repeats itself, so a retry appends the answer and the parse error to the conversation instead
    of resending the same prompt.

    Raises:
        NamingError: Still unusable after ``max_tries`` answers (the last error is in the message).
    """
    convo, error = list(messages), None
    for _ in range(max_tries):
        answer = chat(convo)
        try:
            return parse(answer)
        except NamingError as err:
            error = err
            convo = [
                *convo,
                {"role": "assistant", "content": [{"type": "text", "text": answer}]},
                {"role": "user", "content": [{"type": "text", "text": RETRY_PROMPT.format(error=err)}]},
            ]
    raise NamingError(f"no usable answer after {max_tries} tries: {error}")


# --------------------------------------------------------------------------------------------- image selection
def naming_images(a: torch.Tensor, n_first: int = 15, n_last: int = 15, seed: int = 0) -> torch.Tensor:
    """Indices of the images shown to name a latent with activations ``a`` ``[N]``.

    The top ``L0 - L0 // 3`` images by activation (L0 = images with a positive activation), of which the first
    ``n_first`` and the last ``n_last``, shuffled with ``seed``.
    """
    l0 = int((a > 0).sum())
    top = a.argsort(descending=True, stable=True)[: l0 - l0 // 3]
    chosen = top if len(top) <= n_first + n_last else torch.cat([top[:n_first], top[-n_last:]])
    return chosen[torch.randperm(len(chosen), generator=torch.Generator().manual_seed(seed))]


def evaluation_images(
    a: torch.Tensor, n_pos: int = 30, n_neg: int = 30, zero: float = 1e-7, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images to evaluate a name: the ``n_pos`` top-activating and ``n_neg`` random non-activating ones.

    Returns:
        ``(indices [n], truth [n])`` with truth 1 for activating images, shuffled together with ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    active = (a > zero).nonzero().flatten()
    pos = active[a[active].argsort(descending=True, stable=True)[:n_pos]]
    inactive = (a <= zero).nonzero().flatten()
    neg = inactive[torch.randperm(len(inactive), generator=gen)[:n_neg]]
    idx = torch.cat([pos, neg])
    truth = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).long()
    perm = torch.randperm(len(idx), generator=gen)
    return idx[perm], truth[perm]


def precision_recall_f1(pred: Sequence[int], truth: Sequence[int]) -> dict[str, float]:
    """Binary precision, recall and F1 (0 where undefined)."""
    tp = sum(p == 1 and t == 1 for p, t in zip(pred, truth))
    fp = sum(p == 1 and t == 0 for p, t in zip(pred, truth))
    fn = sum(p == 0 and t == 1 for p, t in zip(pred, truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


# ---------------------------------------------------------------------------------------------------- namers
class NeuronNamer(ABC):
    """Names a latent from the images it is shown, and judges images against a name."""

    @abstractmethod
    def name(self, images: torch.Tensor, labels: torch.Tensor | None = None, reports: Sequence[str] | None = None):
        """A :class:`NeuronName` for images ``[n, 1, H, W]`` (their labels ``[n, C]`` / reports if available)."""

    @abstractmethod
    def classify(self, images: torch.Tensor, concept: str, labels: torch.Tensor | None = None) -> list[int]:
        """0/1 per image of ``images`` ``[n, 1, H, W]``: does it show ``concept``?"""


def to_pil(image: torch.Tensor):
    """A ``[1, H, W]`` image in [0, 1] as a greyscale-in-RGB PIL image (what VLM processors expect)."""
    from PIL import Image

    array = (image.clamp(0, 1)[0] * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(array, mode="L").convert("RGB")


class VLMNamer(NeuronNamer):
    """The paper's namer: a vision-language model behind a chat callable, strict JSON, bounded retries.

    Args:
        chat: ``messages -> answer text`` (e.g. :class:`TransformersChat`).
        max_tries: Answers allowed per question.
        per_prompt: Images per classification prompt (5 in the paper).
    """

    def __init__(self, chat: Chat, max_tries: int = 3, per_prompt: int = 5):
        self.chat, self.max_tries, self.per_prompt = chat, max_tries, per_prompt

    @staticmethod
    def _messages(images: torch.Tensor, text: str) -> list[dict]:
        content = [{"type": "image", "image": to_pil(img)} for img in images] + [{"type": "text", "text": text}]
        return [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
            {"role": "user", "content": content},
        ]

    def name(self, images, labels=None, reports=None) -> NeuronName:
        note = ""
        if reports:
            note = ", with excerpts of their reports:\n" + "\n".join(f"{i + 1}. {r}" for i, r in enumerate(reports))
        prompt = NAMING_PROMPT.format(n=len(images), reports=note)
        return ask(self.chat, self._messages(images, prompt), parse_name, self.max_tries)

    def classify(self, images, concept, labels=None) -> list[int]:
        out: list[int] = []
        for start in range(0, len(images), self.per_prompt):
            chunk = images[start : start + self.per_prompt]
            prompt = CLASSIFY_PROMPT.format(concept=concept, n=len(chunk))
            n = len(chunk)
            parse = lambda text, n=n: parse_labels(text, n)  # noqa: E731
            out += ask(self.chat, self._messages(chunk, prompt), parse, self.max_tries)
        return out


class TransformersChat:
    """A transformers image-text-to-text model as a :data:`Chat` (greedy decoding), loaded on first use.

    Args:
        model_id: Hub id or local folder (default MedGemma 4B instruction-tuned; gated: accept its terms and log in).
        max_new_tokens: Generation length limit.
        device: Torch device (default: CUDA when available).
        dtype: Weights dtype name.
    """

    def __init__(
        self,
        model_id: str = "google/medgemma-4b-it",
        max_new_tokens: int = 300,
        device: str | None = None,
        dtype: str = "bfloat16",
    ):
        self.model_id, self.max_new_tokens, self.dtype = model_id, max_new_tokens, dtype
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = self.processor = None

    def _load(self) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(self.model_id)
        self.model = AutoModelForImageTextToText.from_pretrained(self.model_id, torch_dtype=getattr(torch, self.dtype))
        self.model.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, messages: list[dict]) -> str:
        if self.model is None:
            self._load()
        inputs = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        ).to(self.device)
        n_prompt = inputs["input_ids"].shape[-1]
        tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.decode(tokens[0][n_prompt:], skip_special_tokens=True)


def humanise(label: str) -> str:
    """``"wide_mediastinum"`` -> ``"wide mediastinum"``."""
    return label.replace("_", " ").lower()


class LabelNamer(NeuronNamer):
    """Offline namer and classifier built on the images' ground-truth findings (no images are looked at).

    Naming: the findings present in at least ``min_share`` of the shown images and ``min_lift`` times more often than
    in the whole dataset, most frequent first (at most ``max_findings``); "no finding" when most shown images have
    none. The answer is written as the same JSON a VLM returns and parsed by :func:`parse_name`. Classification: an
    image shows a concept when it carries every finding the concept names (none, for "no finding").

    Args:
        label_names: Names of the label columns.
        prevalence: Share of each label in the dataset ``[C]``.
        min_share: Smallest share among the shown images for a finding to enter the name.
        min_lift: Smallest over-representation factor.
        max_findings: Findings in one name.
    """

    NO_FINDING = "no finding"

    def __init__(
        self,
        label_names: Sequence[str],
        prevalence: torch.Tensor,
        min_share: float = 0.5,
        min_lift: float = 1.5,
        max_findings: int = 2,
    ):
        self.label_names = [humanise(n) for n in label_names]
        self.prevalence = prevalence.double()
        self.min_share, self.min_lift, self.max_findings = min_share, min_lift, max_findings

    def findings_of(self, concept: str) -> list[int] | None:
        """Label columns a concept names (None: the concept names no known finding)."""
        text = concept.lower()
        if self.NO_FINDING in text:
            return []
        found = [i for i, n in enumerate(self.label_names) if n in text]
        return found or None

    def answer(self, labels: torch.Tensor) -> str:
        """The JSON answer for the shown images' labels ``[n, C]``."""
        share = labels.double().mean(0)
        lift = share / self.prevalence.clamp_min(1e-12)
        keep = ((share >= self.min_share) & (lift >= self.min_lift)).nonzero().flatten()
        keep = keep[share[keep].argsort(descending=True)][: self.max_findings].tolist()
        none_share = float((labels.sum(1) == 0).double().mean())
        if keep:
            names = " and ".join(self.label_names[i] for i in keep)
            detail = ", ".join(f"{self.label_names[i]} in {share[i]:.0%}" for i in keep)
            concept = f"chest radiographs showing {names}"
            description = f"Most shown images carry {names} ({detail} of them)."
        elif none_share >= self.min_share:
            concept = f"normal chest radiographs with {self.NO_FINDING}"
            description = f"{none_share:.0%} of the shown images have no finding."
        else:
            concept = "mixed chest radiographs without shared finding"
            description = "No finding is shared by most of the shown images."
        return json.dumps({"concept": concept, "description": description})

    def name(self, images, labels=None, reports=None) -> NeuronName:
        if labels is None:
            raise ValueError("LabelNamer needs the shown images' labels")
        return parse_name(self.answer(labels))

    def classify(self, images, concept, labels=None) -> list[int]:
        if labels is None:
            raise ValueError("LabelNamer needs the images' labels")
        wanted = self.findings_of(concept)
        if wanted is None:
            return [0] * len(labels)
        if not wanted:
            return (labels.sum(1) == 0).long().tolist()
        return labels[:, wanted].bool().all(1).long().tolist()


# ------------------------------------------------------------------------------------------------- protocol
def name_latents(
    acts: torch.Tensor,
    units: Sequence[int],
    namer: NeuronNamer,
    images: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor | None = None,
    seed: int = 0,
) -> dict[int, NeuronName | NamingError]:
    """Name every latent in ``units`` (activations ``acts`` ``[N, K]``); failures are kept as their error."""
    out: dict[int, NeuronName | NamingError] = {}
    for k in units:
        idx = naming_images(acts[:, k], seed=seed + k)
        try:
            out[k] = namer.name(images(idx), None if labels is None else labels[idx])
        except NamingError as err:
            out[k] = err
    return out


def evaluate_names(
    acts: torch.Tensor,
    names: dict[int, NeuronName],
    namer: NeuronNamer,
    images: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor | None = None,
    seed: int = 0,
) -> dict[int, dict[str, float]]:
    """Precision/recall/F1 of each name used as a classifier of activating vs non-activating images."""
    out = {}
    for k, name in names.items():
        idx, truth = evaluation_images(acts[:, k], seed=seed + k)
        try:
            pred = namer.classify(images(idx), name.concept, None if labels is None else labels[idx])
        except NamingError:
            continue
        out[k] = precision_recall_f1(pred, truth.tolist())
    return out
