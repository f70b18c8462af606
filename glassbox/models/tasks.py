"""Datasets for the embedded models: IOI prompt pairs and repeated-random-token batches.

The embedded models (``glassbox/tiny-gpt2-ioi``, ``glassbox/tiny-llama-ioi``; see
:func:`glassbox.loading.embedded_models`) were trained on exactly two synthetic tasks, whose
vocabulary and sentence templates are defined here (``scripts/train_embedded_models.py`` imports
them, so training and evaluation share one definition):

**Indirect object identification (IOI).** ``"When Mary and John went to the store, John gave a
drink to"`` -> ``" Mary"``. Two names ``A`` and ``B`` are introduced, one of them (the subject
``S``) is repeated, and the answer is the other one (the indirect object ``IO``). Both orders
occur: ``ABBA`` (``S`` = ``B``, ``IO`` = ``A``) and ``BABA`` (``S`` = ``A``, ``IO`` = ``B``).
There are :data:`NAMES` (32 names), :data:`PLACES`, :data:`OBJECTS`, :data:`VERBS` and
:data:`IOI_TEMPLATES` (16 templates). The unordered name pairs and the templates are split
into a training part and a held-out part (:func:`name_pairs`, :data:`TRAIN_TEMPLATES`,
:data:`HELDOUT_TEMPLATES`): the models never saw a held-out pair of names together, nor a
held-out template, during training (every single name and word was seen).

**Induction.** ``BOS r_1 ... r_L r_1 ... r_L`` with ``r_i`` drawn uniformly from the 64
:data:`RANDOM_WORDS`: the first copy is unpredictable, the second is predictable only by
induction (attend to the token after the previous occurrence of the current token and copy it).

Everything is deterministic under ``seed`` (NumPy ``default_rng``). Tokens are NumPy ``int64``
arrays; pass them to a model as they are (or ``torch.from_numpy`` them). Typical use::

    from glassbox import HookedTransformer
    from glassbox.models import tasks

    model = HookedTransformer.from_pretrained("glassbox/tiny-gpt2-ioi")
    batch = tasks.ioi_batch(model, n=64, seed=0)            # held-out names and templates
    logits = model(batch.clean_tokens)
    print(batch.accuracy(logits), batch.logit_diff(logits).mean())

    tokens = tasks.induction_tokens(model, batch=8, seq_len=20, seed=0)
    logits, cache = model.run_with_cache(tokens)
    scores = tasks.induction_scores(cache, seq_len=20)        # [n_layers, n_heads]
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "NAMES", "PLACES", "OBJECTS", "VERBS", "IOI_TEMPLATES", "TRAIN_TEMPLATES",
    "HELDOUT_TEMPLATES", "RANDOM_WORDS", "SPLITS", "name_pairs", "IOIPrompt", "IOIBatch",
    "ioi_prompts", "corrupt_prompts", "ioi_batch", "induction_tokens", "induction_scores",
    "induction_losses", "get_tokenizer", "vocabulary_words",
]

# --------------------------------------------------------------------------------------------
# vocabulary
# --------------------------------------------------------------------------------------------

#: The 32 names (each a single token with and without a leading space: ``" Mary"``, ``"Mary"``).
NAMES: Tuple[str, ...] = (
    "Mary", "John", "Alice", "Bob", "Sarah", "James", "Emma", "David",
    "Laura", "Michael", "Anna", "Daniel", "Kate", "Paul", "Lucy", "Mark",
    "Rachel", "Tom", "Julia", "Peter", "Grace", "Steven", "Helen", "Chris",
    "Emily", "Robert", "Sophie", "Kevin", "Claire", "Adam", "Linda", "Eric",
)

#: Places (``the {PLACE}``).
PLACES: Tuple[str, ...] = (
    "store", "park", "school", "beach", "office", "station", "garden", "market",
    "library", "hospital", "restaurant", "museum", "cafe", "zoo", "river", "lake",
)

#: Objects (``a {OBJECT}`` / ``the {OBJECT}``; none starts with a vowel).
OBJECTS: Tuple[str, ...] = (
    "drink", "ball", "book", "letter", "bag", "ring", "cake", "key",
    "card", "gift", "flower", "pen", "hat", "cup", "box", "toy",
)

#: Giving verbs (``{S} {VERB} a {OBJECT} to``).
VERBS: Tuple[str, ...] = ("gave", "handed", "passed", "threw", "brought", "sent", "showed")

#: IOI templates. Slots: ``{A}`` and ``{B}`` (the two names, in order of appearance), ``{S}``
#: (the repeated subject, equal to A or B), ``{PLACE}``, ``{OBJECT}``, ``{VERB}``. Each ends
#: with ``" to"``; the answer is ``" " + IO``.
IOI_TEMPLATES: Tuple[str, ...] = (
    "When {A} and {B} went to the {PLACE}, {S} {VERB} a {OBJECT} to",
    "After {A} and {B} went to the {PLACE}, {S} {VERB} the {OBJECT} to",
    "While {A} and {B} were at the {PLACE}, {S} {VERB} a {OBJECT} to",
    "Then {A} and {B} walked to the {PLACE}, and {S} {VERB} the {OBJECT} to",
    "{A} and {B} went to the {PLACE}. {S} {VERB} a {OBJECT} to",
    "When {A} and {B} got to the {PLACE}, {S} {VERB} the {OBJECT} to",
    "Once {A} and {B} were at the {PLACE}, {S} {VERB} a {OBJECT} to",
    "{A} and {B} had a long day at the {PLACE}. Then {S} {VERB} the {OBJECT} to",
    "After the party, {A} and {B} walked to the {PLACE}, where {S} {VERB} a {OBJECT} to",
    "Later, {A} and {B} met at the {PLACE}, and {S} {VERB} a {OBJECT} to",
    "While {A} and {B} waited at the {PLACE}, {S} {VERB} the {OBJECT} to",
    "{A} and {B} met at the {PLACE}. Later {S} {VERB} the {OBJECT} to",
    # held out (indices 12..15): new arrangements of words seen in the training templates
    "Once {A} and {B} got to the {PLACE}, {S} {VERB} the {OBJECT} to",
    "Then, {A} and {B} waited at the {PLACE}. {S} {VERB} a {OBJECT} to",
    "After {A} and {B} had a long day at the {PLACE}, {S} {VERB} a {OBJECT} to",
    "Then {A} and {B} met at the {PLACE}, where {S} {VERB} the {OBJECT} to",
)

#: Indices of the templates used in training.
TRAIN_TEMPLATES: Tuple[int, ...] = tuple(range(12))
#: Indices of the templates never seen in training.
HELDOUT_TEMPLATES: Tuple[int, ...] = (12, 13, 14, 15)

#: The 64 words of the induction sequences (in training, only ever seen as random tokens).
RANDOM_WORDS: Tuple[str, ...] = tuple("""
apple stone cloud window mountain silver orange winter summer candle forest paper
table chair bottle mirror pencil button basket carpet ladder pillow rocket tunnel violin
wallet anchor bridge castle desert engine feather island jungle kettle lantern meadow needle
planet ribbon shadow temple valley wagon zebra tiger eagle rabbit turtle spider dragon monkey
parrot dolphin copper marble velvet cotton purple yellow crimson gentle quiet frozen
""".split())
# drop accidental duplicates while keeping the order
RANDOM_WORDS = tuple(dict.fromkeys(RANDOM_WORDS))

#: The split names accepted by :func:`ioi_prompts` for ``names`` and ``templates``.
SPLITS = ("train", "heldout", "all")

_PAIR_SPLIT_SEED = 20240607
_HELDOUT_PAIR_FRACTION = 0.25


def vocabulary_words() -> List[str]:
    """Every word the IOI templates, names, places, objects, verbs and the random-word pool use
    (no punctuation), in a fixed order. The shipped tokenizers hold each of them with a leading
    space (``"Ġword"`` in byte-level form) and, for capitalised words, without one too."""
    import re

    words: List[str] = []
    for t in IOI_TEMPLATES:
        for w in re.findall(r"[A-Za-z]+", re.sub(r"\{[A-Z]+\}", " ", t)):
            words.append(w)
    words += list(NAMES) + list(PLACES) + list(OBJECTS) + list(VERBS) + list(RANDOM_WORDS)
    return list(dict.fromkeys(words))


def name_pairs(split: str = "all") -> List[Tuple[str, str]]:
    """Unordered name pairs ``(A, B)`` (in :data:`NAMES` order) of a split.

    A fixed 25% of the 496 pairs is held out: those two names never appear together in a
    training prompt. ``split`` is ``"train"``, ``"heldout"`` or ``"all"``.
    """
    _check_split(split, "split")
    pairs = list(itertools.combinations(NAMES, 2))
    rng = np.random.default_rng(_PAIR_SPLIT_SEED)
    order = rng.permutation(len(pairs))
    n_held = int(round(_HELDOUT_PAIR_FRACTION * len(pairs)))
    held = set(order[:n_held].tolist())
    if split == "all":
        return pairs
    want_held = split == "heldout"
    return [p for i, p in enumerate(pairs) if (i in held) == want_held]


def _check_split(value: Any, arg: str) -> None:
    if value not in SPLITS:
        raise ValueError(f"{arg}={value!r}: expected one of {SPLITS}")


def _template_ids(templates: Union[str, Sequence[int]]) -> List[int]:
    if isinstance(templates, str):
        _check_split(templates, "templates")
        return {"train": list(TRAIN_TEMPLATES), "heldout": list(HELDOUT_TEMPLATES),
                "all": list(range(len(IOI_TEMPLATES)))}[templates]
    ids = [int(t) for t in templates]
    if not ids or any(not 0 <= t < len(IOI_TEMPLATES) for t in ids):
        raise ValueError(f"templates={list(templates)!r}: expected a split name or indices in "
                         f"0..{len(IOI_TEMPLATES) - 1}")
    return ids


# --------------------------------------------------------------------------------------------
# IOI prompts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IOIPrompt:
    """One IOI prompt.

    Attributes:
        text: the prompt, ending in ``" to"`` (no answer, no BOS).
        io: the indirect object (the correct answer is ``" " + io``).
        s: the subject, named twice (the distractor).
        a, b: the two names in order of first appearance (``{io, s} == {a, b}``).
        order: ``"ABBA"`` (``io == a``) or ``"BABA"`` (``io == b``).
        template: index into :data:`IOI_TEMPLATES`.
        place, obj, verb: the other slot fillers.
    """

    text: str
    io: str
    s: str
    a: str
    b: str
    order: str
    template: int
    place: str
    obj: str
    verb: str

    @property
    def answer(self) -> str:
        """The correct next token as text: ``" " + io``."""
        return " " + self.io


def _fill(template: int, a: str, b: str, s: str, place: str, obj: str, verb: str) -> str:
    return IOI_TEMPLATES[template].format(A=a, B=b, S=s, PLACE=place, OBJECT=obj, VERB=verb)


def _make_prompt(template: int, a: str, b: str, order: str, place: str, obj: str, verb: str) -> IOIPrompt:
    io, s = (a, b) if order == "ABBA" else (b, a)
    return IOIPrompt(_fill(template, a, b, s, place, obj, verb), io, s, a, b, order, template,
                     place, obj, verb)


def ioi_prompts(n: int, *, names: str = "heldout", templates: Union[str, Sequence[int]] = "heldout",
                orders: Sequence[str] = ("ABBA", "BABA"), seed: int = 0) -> List[IOIPrompt]:
    """``n`` IOI prompts drawn (with replacement) from a split.

    Args:
        n: number of prompts (>= 1).
        names: which unordered name pairs: ``"heldout"`` (default: pairs never seen together in
            training), ``"train"`` or ``"all"`` (see :func:`name_pairs`).
        templates: ``"heldout"`` (default: templates never seen in training), ``"train"``,
            ``"all"`` or a list of template indices.
        orders: the orders to alternate, ``"ABBA"`` and/or ``"BABA"``; prompt ``i`` uses
            ``orders[i % len(orders)]`` so a batch is balanced.
        seed: NumPy seed; the same arguments give the same prompts.

    Which of the two names comes first is drawn at random, so each name occurs as IO and as S.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n={n!r}: expected a positive integer")
    _check_split(names, "names")
    tids = _template_ids(templates)
    orders = list(orders)
    if not orders or any(o not in ("ABBA", "BABA") for o in orders):
        raise ValueError(f"orders={orders!r}: expected 'ABBA' and/or 'BABA'")
    pairs = name_pairs(names)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(int(n)):
        x, y = pairs[rng.integers(len(pairs))]
        a, b = (x, y) if rng.integers(2) == 0 else (y, x)
        t = tids[rng.integers(len(tids))]
        place = PLACES[rng.integers(len(PLACES))]
        obj = OBJECTS[rng.integers(len(OBJECTS))]
        verb = VERBS[rng.integers(len(VERBS))]
        out.append(_make_prompt(t, a, b, orders[i % len(orders)], place, obj, verb))
    return out


def corrupt_prompts(prompts: Sequence[IOIPrompt], kind: str = "swap", seed: int = 0) -> List[IOIPrompt]:
    """Corrupted counterparts of ``prompts``, token for token the same length.

    ``kind``:
        * ``"swap"`` (TransformerLens's IOI demo): the second mention of S becomes IO, so the
          corrupted prompt's answer is the clean S (``"..., Mary gave a drink to"`` -> John).
          The clean logit difference IO - S flips sign.
        * ``"abc"`` (the IOI paper's ABC distribution): A, B and the second-clause subject are
          replaced by three fresh distinct names, so no name is repeated and the clean IO and S
          are both absent; the clean logit difference is ~0 on it.
        * ``"s2_random"``: only the second mention of S is replaced, by a third name.
    The returned :class:`IOIPrompt` fields describe the corrupted text (for ``"abc"``, ``io`` /
    ``s`` are the names standing where the clean IO and S stood; ``order`` is kept).
    """
    if kind not in ("swap", "abc", "s2_random"):
        raise ValueError(f"kind={kind!r}: expected 'swap', 'abc' or 's2_random'")
    rng = np.random.default_rng(seed)
    out = []
    for p in prompts:
        if kind == "swap":
            text = _fill(p.template, p.a, p.b, p.io, p.place, p.obj, p.verb)
            out.append(IOIPrompt(text, p.s, p.io, p.a, p.b, "BABA" if p.order == "ABBA" else "ABBA",
                                 p.template, p.place, p.obj, p.verb))
            continue
        others = [nm for nm in NAMES if nm not in (p.a, p.b)]
        picks = rng.choice(len(others), size=3, replace=False)
        x, y, z = (others[i] for i in picks)
        if kind == "abc":
            text = _fill(p.template, x, y, z, p.place, p.obj, p.verb)
            io, s = (x, y) if p.order == "ABBA" else (y, x)
            out.append(IOIPrompt(text, io, s, x, y, p.order, p.template, p.place, p.obj, p.verb))
        else:
            text = _fill(p.template, p.a, p.b, x, p.place, p.obj, p.verb)
            out.append(IOIPrompt(text, p.io, p.s, p.a, p.b, p.order, p.template, p.place, p.obj, p.verb))
    return out


def get_tokenizer(model_or_tokenizer: Any):
    """A :class:`glassbox.Tokenizer` from a HookedTransformer (its ``.tokenizer``), a tokenizer
    (glassbox, ``tokenizers`` or transformers), a model folder, or an embedded model name."""
    from glassbox.tokenization import Tokenizer

    tok = getattr(model_or_tokenizer, "tokenizer", None)
    if tok is not None and hasattr(model_or_tokenizer, "cfg"):
        return Tokenizer.wrap(tok)
    if isinstance(model_or_tokenizer, str):
        from glassbox.loading.embedded import embedded_model_path, is_embedded_name

        if is_embedded_name(model_or_tokenizer):
            return Tokenizer.from_dir(embedded_model_path(model_or_tokenizer))
    if model_or_tokenizer is None:
        raise TypeError("expected a HookedTransformer, a tokenizer or a model folder, got None")
    return Tokenizer.wrap(model_or_tokenizer)


def _encode(tok: Any, text: str) -> List[int]:
    ids = tok.encode(text, add_special_tokens=False)
    unk = tok.convert_tokens_to_ids(tok.unk_token) if tok.unk_token else None
    if unk is not None and unk in ids:
        raise ValueError(f"{text!r} has words outside this tokenizer's vocabulary")
    return ids


def _single(tok: Any, text: str) -> int:
    ids = _encode(tok, text)
    if len(ids) != 1:
        raise ValueError(f"{text!r} is {len(ids)} tokens for this tokenizer, expected 1")
    return ids[0]


@dataclass
class IOIBatch:
    """IOI prompts and their corrupted counterparts as token arrays.

    Rows are right-padded with the pad id to the longest prompt; clean and corrupted rows have
    the same length, so position ``end_positions[i]`` (the final ``" to"``) is the place to
    read logits in both.

    Attributes:
        clean_tokens, corrupted_tokens: ``[n, pos]`` int64 (BOS first when ``prepend_bos``).
        io_tokens, s_tokens: ``[n]`` int64 ids of ``" " + IO`` and ``" " + S`` of the clean
            prompts (the correct and the incorrect answer).
        answer_tokens: ``[n, 2]`` = ``stack([io_tokens, s_tokens], 1)`` (TransformerLens's IOI
            demo layout: correct, incorrect).
        corrupted_answer_tokens: ``[n, 2]`` the corrupted prompts' own correct/incorrect ids.
        end_positions: ``[n]`` index of the last real token of each row.
        positions: ``{"IO", "S1", "S2", "END"}`` -> ``[n]`` token positions of the IO name, the
            first and second S, and the end, in the clean prompts.
        attention_mask: ``[n, pos]`` 1 on real tokens, 0 on padding.
        prompts, corrupted_prompts: the :class:`IOIPrompt` objects.
    """

    clean_tokens: np.ndarray
    corrupted_tokens: np.ndarray
    io_tokens: np.ndarray
    s_tokens: np.ndarray
    answer_tokens: np.ndarray
    corrupted_answer_tokens: np.ndarray
    end_positions: np.ndarray
    positions: Dict[str, np.ndarray]
    attention_mask: np.ndarray
    prompts: List[IOIPrompt] = field(default_factory=list)
    corrupted_prompts: List[IOIPrompt] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.clean_tokens.shape[0])

    def end_logits(self, logits: Any) -> np.ndarray:
        """``[n, d_vocab]`` logits at each row's end position (NumPy, float64)."""
        from glassbox.arrays import to_numpy

        lg = np.asarray(to_numpy(logits), dtype=np.float64)
        if lg.ndim != 3 or lg.shape[:2] != self.clean_tokens.shape:
            raise ValueError(f"logits: expected shape [{len(self)}, {self.clean_tokens.shape[1]}, "
                             f"d_vocab], got {list(lg.shape)}")
        return lg[np.arange(len(self)), self.end_positions]

    def logit_diff(self, logits: Any, answers: Optional[np.ndarray] = None) -> np.ndarray:
        """``[n]`` logit(IO) - logit(S) at the end position (``answers``: an ``[n, 2]`` array
        of (correct, incorrect) ids, default :attr:`answer_tokens`)."""
        end = self.end_logits(logits)
        ans = self.answer_tokens if answers is None else np.asarray(answers)
        rows = np.arange(len(self))
        return end[rows, ans[:, 0]] - end[rows, ans[:, 1]]

    def accuracy(self, logits: Any, answers: Optional[np.ndarray] = None) -> float:
        """Fraction of rows whose top-1 next token (over the whole vocabulary) is the correct
        answer (``answers[:, 0]``, default the clean IO)."""
        end = self.end_logits(logits)
        ans = self.io_tokens if answers is None else np.asarray(answers)[:, 0]
        return float(np.mean(end.argmax(-1) == ans))


def ioi_batch(model_or_tokenizer: Any, n: int = 64, *, names: str = "heldout",
              templates: Union[str, Sequence[int]] = "heldout", corruption: str = "swap",
              orders: Sequence[str] = ("ABBA", "BABA"), seed: int = 0,
              prepend_bos: bool = True) -> IOIBatch:
    """Tokenised IOI prompt pairs for activation patching and accuracy / logit-difference metrics.

    Args:
        model_or_tokenizer: a HookedTransformer, a tokenizer, a model folder or an embedded
            model name (its tokenizer is used; the shipped ones hold every task word).
        n, names, templates, orders, seed: as :func:`ioi_prompts` (default: held-out name pairs
            and held-out templates).
        corruption: ``"swap"``, ``"abc"`` or ``"s2_random"`` (see :func:`corrupt_prompts`).
        prepend_bos: put the tokenizer's BOS first (TransformerLens's default).

    Raises:
        ValueError: a word outside the tokenizer's vocabulary, or a name that is not one token.
    """
    tok = get_tokenizer(model_or_tokenizer)
    prompts = ioi_prompts(n, names=names, templates=templates, orders=orders, seed=seed)
    corrupted = corrupt_prompts(prompts, corruption, seed=seed + 1)
    bos = [tok.bos_token_id] if prepend_bos else []
    if prepend_bos and tok.bos_token_id is None:
        raise ValueError("prepend_bos=True but the tokenizer has no BOS token")
    clean_rows = [bos + _encode(tok, p.text) for p in prompts]
    corr_rows = [bos + _encode(tok, p.text) for p in corrupted]
    for i, (c, r) in enumerate(zip(clean_rows, corr_rows)):
        if len(c) != len(r):  # cannot happen with single-token names; guard anyway
            raise ValueError(f"prompt {i}: clean and corrupted prompts differ in length "
                             f"({len(c)} vs {len(r)} tokens)")
    width = max(len(r) for r in clean_rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    clean = np.full((n, width), pad, dtype=np.int64)
    corr = np.full((n, width), pad, dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    pos = {k: np.zeros(n, dtype=np.int64) for k in ("IO", "S1", "S2", "END")}
    for i, (c, r, p) in enumerate(zip(clean_rows, corr_rows, prompts)):
        clean[i, :len(c)] = c
        corr[i, :len(r)] = r
        mask[i, :len(c)] = 1
        io_id, s_id = _single(tok, " " + p.io), _single(tok, " " + p.s)
        io_bare, s_bare = _single(tok, p.io), _single(tok, p.s)
        s_where = [j for j, t in enumerate(c) if t in (s_id, s_bare)]
        io_where = [j for j, t in enumerate(c) if t in (io_id, io_bare)]
        pos["IO"][i] = io_where[0]
        pos["S1"][i] = s_where[0]
        pos["S2"][i] = s_where[1]
        pos["END"][i] = len(c) - 1
    io_tokens = np.array([_single(tok, p.answer) for p in prompts], dtype=np.int64)
    s_tokens = np.array([_single(tok, " " + p.s) for p in prompts], dtype=np.int64)
    c_io = np.array([_single(tok, " " + p.io) for p in corrupted], dtype=np.int64)
    c_s = np.array([_single(tok, " " + p.s) for p in corrupted], dtype=np.int64)
    return IOIBatch(
        clean_tokens=clean, corrupted_tokens=corr, io_tokens=io_tokens, s_tokens=s_tokens,
        answer_tokens=np.stack([io_tokens, s_tokens], 1),
        corrupted_answer_tokens=np.stack([c_io, c_s], 1),
        end_positions=pos["END"].copy(), positions=pos, attention_mask=mask,
        prompts=prompts, corrupted_prompts=corrupted,
    )


# --------------------------------------------------------------------------------------------
# induction
# --------------------------------------------------------------------------------------------


def _token_pool(tok: Any, pool: str) -> np.ndarray:
    specials = {t for t in (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) if t}
    if pool == "vocab":
        ids = sorted(i for t, i in tok.vocab.items() if t not in specials and not t.startswith("<|"))
    elif pool == "random_words":
        # the words this tokenizer keeps whole (all 64 for the embedded models; a BPE vocabulary
        # such as SmolLM2's splits a few, e.g. " crimson")
        ids = [ids[0] for ids in (_encode(tok, " " + w) for w in RANDOM_WORDS) if len(ids) == 1]
        if len(ids) < 16:
            raise ValueError(f"pool='random_words': only {len(ids)} of the {len(RANDOM_WORDS)} "
                             "RANDOM_WORDS are single tokens for this tokenizer (need 16); "
                             "use pool='vocab'")
    else:
        raise ValueError(f"pool={pool!r}: expected 'vocab' or 'random_words'")
    return np.asarray(ids, dtype=np.int64)


def induction_tokens(model_or_tokenizer: Any, batch: int = 8, seq_len: int = 20, *, seed: int = 0,
                     pool: str = "random_words", prepend_bos: bool = True) -> np.ndarray:
    """Repeated random tokens: ``[batch, 1 + 2 * seq_len]`` int64, each row
    ``BOS r_1 .. r_seq_len r_1 .. r_seq_len`` (``[batch, 2 * seq_len]`` without the BOS).

    ``r_i`` are drawn uniformly from ``pool``, distinct within a row when ``seq_len`` is at
    most the pool size (so every token of the second copy has exactly one earlier occurrence, as
    with a large vocabulary; with replacement otherwise): ``"random_words"`` (those of the 64
    :data:`RANDOM_WORDS` that are one token for this tokenizer, as in training; default) or ``"vocab"`` (every non-special token:
    induction on names and template words, which the models never saw repeated at random).
    The embedded models were trained on segments of up to 32 tokens repeated 2..4 times (rows of
    at most 65 tokens); ``n_ctx`` is 128.
    """
    for name, v in (("batch", batch), ("seq_len", seq_len)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}={v!r}: expected a positive integer")
    tok = get_tokenizer(model_or_tokenizer)
    ids = _token_pool(tok, pool)
    rng = np.random.default_rng(seed)
    if seq_len <= len(ids):  # distinct tokens within a row, as a large vocabulary would give
        half = ids[np.argsort(rng.random((int(batch), len(ids))), axis=1)[:, :int(seq_len)]]
    else:
        half = ids[rng.integers(len(ids), size=(int(batch), int(seq_len)))]
    parts = [half, half]
    if prepend_bos:
        if tok.bos_token_id is None:
            raise ValueError("prepend_bos=True but the tokenizer has no BOS token")
        parts.insert(0, np.full((int(batch), 1), tok.bos_token_id, dtype=np.int64))
    return np.concatenate(parts, axis=1)


def induction_scores(cache: Any, seq_len: int, *, prepend_bos: bool = True) -> np.ndarray:
    """Induction score of every head, ``[n_layers, n_heads]``.

    A head's score is its mean attention, over the batch and over the query positions of the
    second copy, from position ``i`` to position ``i - seq_len + 1`` (the token after the
    previous occurrence of the current token), as in TransformerLens's induction-head demo.
    ``cache`` is an :class:`~glassbox.ActivationCache` (or a dict) holding
    ``blocks.{l}.attn.hook_pattern`` for every layer of a run on :func:`induction_tokens`
    (same ``seq_len`` and ``prepend_bos``).
    """
    from glassbox.arrays import to_numpy

    keys = sorted((k for k in (cache.keys() if hasattr(cache, "keys") else [])
                   if str(k).endswith("attn.hook_pattern")), key=lambda k: int(str(k).split(".")[1]))
    if not keys:
        raise ValueError("cache holds no blocks.{l}.attn.hook_pattern entries")
    start = 1 if prepend_bos else 0
    q = np.arange(start + seq_len, start + 2 * seq_len)
    k = q - seq_len + 1
    rows = []
    for key in keys:
        pat = np.asarray(to_numpy(cache[key]))
        if pat.ndim != 4 or pat.shape[-1] < start + 2 * seq_len:
            raise ValueError(f"{key}: shape {list(pat.shape)} does not fit seq_len={seq_len} "
                             f"(need [batch, head, {start + 2 * seq_len}, {start + 2 * seq_len}])")
        rows.append(pat[:, :, q, k].mean(axis=(0, 2)))
    return np.stack(rows)


def induction_losses(logits: Any, tokens: Any, seq_len: int, *, prepend_bos: bool = True) -> Dict[str, float]:
    """Mean next-token loss (nats) on the two copies of :func:`induction_tokens` rows.

    ``"first_half"``: predictions of ``r_2 .. r_L`` in the first copy; ``"repeated_half"``:
    predictions of ``r_2 .. r_L`` in the second copy (``L - 1`` predictions each; ``r_1`` is
    left out of both, since its second occurrence follows ``r_L`` and cannot be predicted by
    induction). A model doing induction has a repeated-half loss far below the first-half loss
    (which is about ``log(pool size)`` for a model that cannot predict random tokens).
    """
    from glassbox.arrays import to_numpy

    lg = np.asarray(to_numpy(logits), dtype=np.float64)
    tk = np.asarray(to_numpy(tokens)).astype(np.int64)
    start = 1 if prepend_bos else 0
    if lg.ndim != 3 or tk.shape != lg.shape[:2] or tk.shape[1] != start + 2 * seq_len:
        raise ValueError(f"logits {list(lg.shape)} / tokens {list(tk.shape)} do not fit "
                         f"seq_len={seq_len} (expected tokens [batch, {start + 2 * seq_len}])")
    lg = lg - lg.max(-1, keepdims=True)
    logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp[:, :-1], tk[:, 1:, None], -1)[..., 0]  # [B, P-1]: predicts t+1
    # target position t is predicted at index t - 1 of nll
    first_targets = np.arange(start + 1, start + seq_len)             # r_2 .. r_L, first copy
    rep_targets = np.arange(start + seq_len + 1, start + 2 * seq_len)  # r_2 .. r_L, second copy
    first = nll[:, first_targets - 1]
    rep = nll[:, rep_targets - 1]
    return {"first_half": float(first.mean()), "repeated_half": float(rep.mean())}
