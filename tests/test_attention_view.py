"""glassbox.visualization: the interactive attention view (HTML) and the static heatmaps.

Without a browser: the embedded data decodes to the cache's patterns rounded to ``digits``
(exactly), the page is self-contained (no URL, no ``src=``/``href=``), tokens cannot break out of
the JSON (``</script>``, ``<!--``, quotes, newlines, U+2028), bad input raises, figures hold the
data.

In a real headless browser (Debian's ``chromium``, driven over the DevTools protocol by
``tests/helpers_browser.py``): the error detector catches a thrown exception, a syntax error,
``console.error`` and a view whose script or data was broken on purpose; the real view loads with
no error, shows every token literally (as text, no injected elements), draws exactly the selected
head's weights (main canvas pixels == the colour scale applied to the rounded pattern), takes its
initial layer/head from ``#layer=L&head=H``, and switching head (mouse click on the head grid,
keyboard, selectors) changes what is drawn (pixels and screenshots differ); hovering a cell shows
its weight and the (query token, key token) pair; two views on one page (a notebook with two
outputs) work independently. Skipped only when no chromium executable is found.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import helpers_browser as hb
import helpers_llama as hl
import helpers_models as hm

import glassbox
from glassbox.visualization import AttentionView, attention_view, plot_attention_heads, plot_attention_pattern
from glassbox.visualization.attention_data import decode, encode

warnings.filterwarnings("ignore", category=DeprecationWarning)
logging.getLogger().setLevel(logging.ERROR)

CHROMIUM = hb.find_chromium()
INSTALL = "apt-get install -y --no-install-recommends chromium"
if CHROMIUM is None and os.environ.get("CI"):  # CI must run the browser tests: a skip would hide a missing install step
    raise RuntimeError(f"the browser tests need chromium; .ci/run must install it ({INSTALL})")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason=f"no chromium executable found (Debian: {INSTALL})")
LLAMA = hl.spec("llama-gqa-9x3", hidden_size=90, num_attention_heads=9, num_key_value_heads=3,
                intermediate_size=131, vocab_size=103, seed=1)  # as in test_parity_llama.py
NASTY = ["<|endoftext|>", "</script>", "<b>bold</b>", "\"quote'", "\n", "  ", "a\tb", "&amp;", "<!--", "\u2028x",
         "$x$", "<img src=x onerror=alert(1)>"]


def shown(t: str) -> str:
    """What the page prints for a token (mirrors the view's JavaScript)."""
    out = ""
    for c in t:
        if c == "\n":
            out += "\\n"
        elif c == "\t":
            out += "\\t"
        elif c == "\r":
            out += "\\r"
        elif ord(c) < 32 or ord(c) == 127:
            out += "\\x%02x" % ord(c)
        else:
            out += c
    if not out:
        return "\u2205"
    if set(out) == {" "}:
        return "\u2423" * len(out)
    return out


def lut():
    """The view's colour scale (white → light blue → dark blue), 256 entries, JS rounding."""
    lo, mid, hi = (255, 255, 255), (107, 174, 214), (8, 48, 107)
    out = []
    for i in range(256):
        t = i / 255
        c = [lo[j] + (mid[j] - lo[j]) * t * 2 for j in range(3)] if t < 0.5 else \
            [mid[j] + (hi[j] - mid[j]) * (t - 0.5) * 2 for j in range(3)]
        out.append([math.floor(x + 0.5) for x in c])
    return np.asarray(out)


def rounded(p, digits=3):
    return np.rint(np.asarray(p, np.float64) * 10 ** digits) / 10 ** digits


def gpt2_cache(zoo, n=12):
    model = zoo.gb(hm.GPT2_ODD)
    tokens = np.asarray(model.to_tokens(hm.PROMPTS[:2]))[:, :n]
    glassbox.set_array_backend("numpy")
    try:
        _, cache = model.run_with_cache(tokens)
    finally:
        glassbox.set_array_backend("auto")
    return model, tokens, cache


def synthetic_patterns(n_layers, n_heads, n, seed=0):
    """Causal softmax patterns of varied sharpness (uniform-ish, sharp, previous-token, BOS)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n_layers, n_heads, n, n), np.float32)
    mask = np.tril(np.ones((n, n), bool))
    for l in range(n_layers):
        for h in range(n_heads):
            kind = (l * n_heads + h) % 4
            s = rng.normal(size=(n, n)) * [0.5, 3.0, 1.0, 1.0][kind]
            if kind == 2:
                s += 8 * np.eye(n, k=-1)
            if kind == 3:
                s[:, 0] += 5
            s = np.where(mask, s, -np.inf)
            e = np.exp(s - s.max(-1, keepdims=True))
            out[l, h] = e / e.sum(-1, keepdims=True)
    return out


# ------------------------------------------------------------------------------------------
# data and HTML, no browser


def test_encoding_round_trip():
    p = synthetic_patterns(2, 3, 9)
    for digits in (1, 3, 4, 5):
        enc = encode(p, digits)
        assert enc["causal"] and len(enc["offsets"]) == 3
        np.testing.assert_array_equal(decode(enc, p.shape), rounded(p, digits).astype(np.float32))
    full = p.copy()
    full[0, 0, 0, 5] = 0.25  # a future key with weight: not causal, stored in full
    enc = encode(full, 3)
    assert not enc["causal"]
    np.testing.assert_array_equal(decode(enc, p.shape), rounded(full).astype(np.float32))
    # fewer queries than keys (e.g. the last 4 queries of 9): causal with an offset
    part = p[:, :, -4:]
    enc = encode(part, 3)
    assert enc["causal"]
    np.testing.assert_array_equal(decode(enc, part.shape), rounded(part).astype(np.float32))
    # a weight below 0.128 takes one byte at 3 digits, others two
    one = np.zeros((1, 1, 2, 2), np.float32)
    one[0, 0, 0, 0], one[0, 0, 1] = 1.0, [0.1, 0.9]
    assert len(__import__("base64").b64decode(encode(one, 3)["data"])) == 2 + 1 + 2


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa"])
def test_view_from_cache(zoo, fixture_root, family):
    if family == "gpt2":
        model, tokens, cache = gpt2_cache(zoo)
    else:
        root = fixture_root / "llama"
        root.mkdir(parents=True, exist_ok=True)
        model = glassbox.HookedTransformer.from_pretrained(str(hl.save_folder(LLAMA, root / LLAMA.key())))
        tokens = np.random.default_rng(0).integers(0, LLAMA.vocab_size, size=(2, 10))
        glassbox.set_array_backend("numpy")
        try:
            _, cache = model.run_with_cache(tokens)
        finally:
            glassbox.set_array_backend("auto")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    view = attention_view(cache, tokens, batch=1)
    assert view.patterns.shape == (L, H, tokens.shape[1], tokens.shape[1])
    np.testing.assert_array_equal(view.patterns, np.stack([cache["pattern", l][1] for l in range(L)]))
    assert view.layers == list(range(L))
    assert view.head_labels == [[f"L{l}H{h}" for h in range(H)] for l in range(L)]
    assert view.kv_group == (1 if family == "gpt2" else 3)
    expect = list(model.to_str_tokens(tokens[1])) if model.tokenizer is not None else [str(i) for i in tokens[1]]
    assert view.tokens == expect
    np.testing.assert_array_equal(decode(view._enc, view.patterns.shape), rounded(view.patterns).astype(np.float32))
    torch = pytest.importorskip("torch")
    _, tcache = model.run_with_cache(torch.as_tensor(tokens))  # a torch-mode cache gives the same view
    assert hasattr(tcache["pattern", 0], "detach")
    np.testing.assert_array_equal(attention_view(tcache, torch.as_tensor(tokens), batch=1).patterns, view.patterns)
    sub = attention_view(cache, tokens, layers=[-1], head=H - 1, batch=0)
    assert sub.layers == [L - 1] and sub.layer == L - 1 and sub.head == H - 1
    np.testing.assert_array_equal(sub.patterns[0], cache["pattern", L - 1][0])


def _data_json(fragment: str, rid: str) -> dict:
    m = re.search(r'<script type="application/json" id="%s-data">(.*?)</script>' % rid, fragment, re.S)
    return json.loads(m.group(1))


def test_html_self_contained_and_escaped():
    p = synthetic_patterns(2, 4, len(NASTY))
    view = AttentionView(p, NASTY, [0, 1], title="<i>title</i> & more")
    a, b = view._repr_html_(), view._repr_html_()
    ra, rb = (re.search(r'<div id="(gbav-[0-9a-f]{12})"', x).group(1) for x in (a, b))
    assert ra != rb, "each rendering needs its own element id"
    for frag, rid in ((a, ra), (b, rb)):
        assert "<html" not in frag and "<body" not in frag and "<!DOCTYPE" not in frag
        assert frag.count("</script>") == 2 and frag.count("<script") == 2
        assert "<!--" not in frag and "\u2028" not in frag
        assert "<b>bold</b>" not in frag and "<img" not in frag and "<i>title" not in frag
        assert frag.count(rid) >= 3 and "#" + rid + " " in frag  # CSS scoped to this view
        data = _data_json(frag, rid)
        assert data["tokens"] == NASTY and data["title"] == "<i>title</i> & more"
        assert data["init"] == {"layer": 0, "head": 0} and data["heads"] == 4
    page = view.to_html(standalone=True)
    assert page.startswith("<!DOCTYPE html>") and "<body" in page and "&lt;i&gt;title&lt;/i&gt; &amp; more" in page
    code = re.sub(r'<script type="application/json".*?</script>', "", page, flags=re.S)  # tokens live only there
    assert not re.search(r"https?:|//cdn|\bsrc\s*=|\bhref\s*=|@import|url\(", code), "the page must not load anything"
    page2 = view.to_html(standalone=True, layer=1, head=3)
    assert _data_json(page2, re.search(r'id="(gbav-[0-9a-f]{12})"', page2).group(1))["init"] == {"layer": 1, "head": 3}


def test_size_of_a_gpt2_shaped_view(tmp_path):
    """12 layers x 12 heads x 64 tokens (causal, varied sharpness) at 3 digits: < 0.6 MB."""
    p = synthetic_patterns(12, 12, 64)
    view = AttentionView(p, [f"t{i}" for i in range(64)], list(range(12)))
    path = view.save(tmp_path / "attn.html")
    size = path.stat().st_size
    print(f"GPT-2-shaped attention view: {size / 1e6:.3f} MB at 3 digits, "
          f"{AttentionView(p, [f't{i}' for i in range(64)], list(range(12)), digits=4).html_size / 1e6:.3f} MB at 4")
    assert size == view.html_size or abs(size - view.html_size) < 100  # fresh ids, same length
    assert size < 600_000
    assert size > 12 * 12 * 64 * 65 / 2 * 4 / 3  # at least one byte per stored weight


def test_bad_input(zoo):
    model, tokens, cache = gpt2_cache(zoo)
    p = synthetic_patterns(1, 2, 5)
    toks = list("abcde")
    with pytest.raises(ValueError, match="tokens has 4 strings"):
        AttentionView(p, toks[:4], [0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        AttentionView(p * 3, toks, [0])
    with pytest.raises(ValueError, match="digits"):
        AttentionView(p, toks, [0], digits=0)
    with pytest.raises(ValueError, match="digits"):
        AttentionView(p, toks, [0], digits=6)
    with pytest.raises(ValueError, match="layer must be one of"):
        AttentionView(p, toks, [0], layer=1)
    with pytest.raises(ValueError, match="head must be in"):
        AttentionView(p, toks, [0], head=2)
    with pytest.raises(ValueError, match="kv_group"):
        AttentionView(p, toks, [0], kv_group=3)
    with pytest.raises(ValueError, match="more query positions"):
        AttentionView(np.zeros((1, 1, 3, 2), np.float32), ["a", "b"], [0])
    with pytest.raises(ValueError, match="shape"):
        attention_view(np.zeros((5, 5)), toks)
    with pytest.raises(TypeError, match="patterns must be"):
        attention_view("not patterns")
    with pytest.raises(ValueError, match="need a model"):
        attention_view(p, "some text")
    assert attention_view(p, np.arange(5)).tokens == list("01234")  # ids without a tokenizer
    with pytest.raises(ValueError, match="3 ids for 5"):
        attention_view(p, np.arange(3))
    with pytest.raises(ValueError, match="one string per key"):
        attention_view(p, ["a"])
    with pytest.raises(ValueError, match="layers must index"):
        attention_view(p, toks, layers=[3])
    with pytest.raises(ValueError, match="batch=5"):
        attention_view(cache, tokens, batch=5)
    with pytest.raises(ValueError, match="layers must be layer indices"):
        attention_view(cache, tokens, layers=[7])
    glassbox.set_array_backend("numpy")
    try:
        _, small = model.run_with_cache(tokens, names_filter=lambda n: "resid" in n)
    finally:
        glassbox.set_array_backend("auto")
    with pytest.raises(ValueError, match="hook_pattern"):
        attention_view(small, tokens)
    nan = p.copy()
    nan[0, 0, 2] = np.nan  # a fully masked query row (left padding) shows as zeros
    assert AttentionView(nan, toks, [0]).patterns[0, 0, 2].sum() == 0


def test_static_plots(zoo):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    model, tokens, cache = gpt2_cache(zoo)
    view = attention_view(cache, tokens, batch=1)
    fig = view.plot(layer=2, head=3)
    assert isinstance(fig, Figure) and fig.axes[0].get_title() == "L2H3"
    img = np.ma.filled(fig.axes[0].images[0].get_array().astype(float), np.nan)
    ref = cache["pattern", 2][1, 3].astype(float)
    np.testing.assert_array_equal(img[np.tril_indices(12)], ref[np.tril_indices(12)])
    assert np.isnan(img[np.triu_indices(12, 1)]).all()  # future keys drawn as background
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [s.replace("$", r"\$") for s in view.tokens]
    grid = view.plot_heads(1)
    with_images = [ax for ax in grid.axes if ax.images]
    assert len(with_images) == model.cfg.n_heads
    assert [ax.get_title() for ax in with_images] == [f"L1H{h}" for h in range(model.cfg.n_heads)]
    np.testing.assert_array_equal(np.ma.filled(with_images[4].images[0].get_array(), 0), np.nan_to_num(np.tril(cache["pattern", 1][1, 4])))
    fig = plot_attention_pattern(synthetic_patterns(1, 1, len(NASTY))[0, 0], NASTY, title="nasty")
    fig.savefig(io.BytesIO(), format="png")  # "$x$" and control characters must not break rendering
    plot_attention_heads(synthetic_patterns(1, 3, 5)[0], list("abcde")).savefig(io.BytesIO(), format="png")
    with pytest.raises(ValueError, match="one head's pattern"):
        plot_attention_pattern(np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="head_labels"):
        plot_attention_heads(np.zeros((2, 3, 3)), head_labels=["a"])


def test_jupyter_display():
    pytest.importorskip("IPython")
    from IPython.core.formatters import HTMLFormatter

    view = AttentionView(synthetic_patterns(1, 2, 4), list("abcd"), [0])
    out = HTMLFormatter()(view)
    assert out.startswith('<div class="gbav-wrap">') and "<script>" in out


# ------------------------------------------------------------------------------------------
# in a real browser


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip(f"no chromium executable found (Debian: {INSTALL})")
    with hb.Browser(CHROMIUM) as b:
        yield b


@pytest.fixture()
def shots(tmp_path):
    """Where screenshots go: $GLASSBOX_SCREENSHOTS if set (to look at them), else tmp."""
    d = Path(os.environ.get("GLASSBOX_SCREENSHOTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _page(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{body}</body></html>")
    return path.as_uri()


ROOT = "document.querySelector('[data-ready]')"


@needs_browser
def test_error_detection_catches_broken_pages(browser, tmp_path):
    browser.goto(_page(tmp_path, "ok.html", "<p>fine</p><script>var x = 1 + 1;</script>"))
    assert browser.errors() == []
    browser.goto(_page(tmp_path, "throw.html", "<script>throw new Error('deliberate boom');</script>"))
    assert any("deliberate boom" in e for e in browser.errors())
    browser.goto(_page(tmp_path, "syntax.html", "<script>function broken( { return 1; }</script>"))
    assert any("SyntaxError" in e for e in browser.errors())
    browser.goto(_page(tmp_path, "console.html", "<script>console.error('deliberate console error');</script>"))
    assert any("deliberate console error" in e for e in browser.errors())
    view = AttentionView(synthetic_patterns(2, 3, 6), list("abcdef"), [0, 1])
    page = view.to_html(standalone=True)
    broken = page.replace("var mats = layerData(state.layer);", "var mats = layerDat(state.layer);")
    assert broken != page
    browser.goto(_page(tmp_path, "broken-view.html", broken.split("<body style=\"margin:12px\">")[1].split("</body>")[0]))
    assert any("ReferenceError" in e and "layerDat" in e for e in browser.errors())
    rid = re.search(r'id="(gbav-[0-9a-f]{12})"', page).group(1)
    data = _data_json(page, rid)
    data["offsets"][1] += 1  # layer 0 (shown first) claims one byte more than it has
    corrupt = re.sub(r'(id="%s-data">)(.*?)(</script>)' % rid, lambda m: m.group(1) + json.dumps(data) + m.group(3), page, flags=re.S)
    browser.goto(_page(tmp_path, "corrupt-data.html", corrupt.split("<body style=\"margin:12px\">")[1].split("</body>")[0]))
    assert any("layer 0 data is corrupt" in e for e in browser.errors())
    assert "corrupt" in browser.evaluate(f"document.getElementById('{rid}').querySelector('.gbav-error').textContent")


def _pixels(browser, K, Q, which="canvas.gbav-canvas"):
    flat = browser.evaluate(f"Array.from({ROOT}.querySelector('{which}').getContext('2d').getImageData(0, 0, {K}, {Q}).data)")
    return np.asarray(flat, np.int64).reshape(Q, K, 4)[..., :3]


def _expected_pixels(p, digits=3, gamma=1.0):
    """The colour the view must draw for each (query, key) of one head (causal: grey above)."""
    Q, K = p.shape
    w = (np.rint(p.astype(np.float64) * 10 ** digits) / 10 ** digits).astype(np.float32).astype(np.float64)
    t = np.sqrt(w) if gamma != 1.0 else w
    idx = np.clip(np.floor(t * 255 + 0.5), 0, 255).astype(int)
    out = lut()[idx]
    out[np.triu_indices(Q, 1)] = 236
    return out, idx


def _assert_drawn(browser, p, what, gamma=1.0):
    Q, K = p.shape
    got = _pixels(browser, K, Q)
    exp, idx = _expected_pixels(p, gamma=gamma)
    L = lut()
    ok = np.zeros((Q, K), bool)
    for d in (-1, 0, 1):  # float rounding of w * 255 at a .5 boundary may pick a neighbour
        ok |= (got == np.where(np.triu(np.ones((Q, K), bool), 1)[..., None], 236, L[np.clip(idx + d, 0, 255)])).all(-1)
    assert ok.all(), f"{what}: {int((~ok).sum())} of {Q * K} cells drawn with the wrong colour"


@needs_browser
def test_view_in_browser(browser, tmp_path, shots):
    p = synthetic_patterns(3, 4, len(NASTY), seed=3)
    view = AttentionView(p, NASTY, [0, 1, 2], title="<b>not bold</b> view")
    url = view.save(tmp_path / "view.html").as_uri()

    browser.goto(url)
    assert browser.errors() == []
    assert browser.evaluate(f"[{ROOT}.dataset.layer, {ROOT}.dataset.head]") == ["0", "0"]
    # tokens, literally, on both axes; nothing the tokens contain became an element
    ylabels = browser.evaluate(f"Array.from({ROOT}.querySelectorAll('.gbav-ylabels .gbav-tok')).map(e => e.textContent)")
    xlabels = browser.evaluate(f"Array.from({ROOT}.querySelectorAll('.gbav-xlabels .gbav-tok')).map(e => e.textContent)")
    assert ylabels == [shown(t) for t in NASTY] and xlabels == ylabels
    assert ylabels[4] == "\\n" and ylabels[5] == "\u2423\u2423" and ylabels[1] == "</script>"
    assert browser.evaluate(f"{ROOT}.querySelectorAll('b, i, img').length") == 0
    assert browser.evaluate(f"{ROOT}.querySelector('.gbav-title').textContent") == "<b>not bold</b> view"
    assert browser.evaluate("document.title") == "<b>not bold</b> view"
    _assert_drawn(browser, p[0, 0], "initial L0H0")
    first = browser.screenshot(shots / "attention-L0H0.png")

    # initial selection from the address
    browser.goto(url + "#layer=2&head=3")
    assert browser.errors() == []
    assert browser.evaluate(f"[{ROOT}.dataset.layer, {ROOT}.dataset.head, {ROOT}.querySelector('.gbav-status').textContent]") == ["2", "3", "L2H3"]
    assert browser.evaluate(f"{ROOT}.querySelector('select.gbav-head').value") == "3"
    _assert_drawn(browser, p[2, 3], "from #layer=2&head=3")
    second = browser.screenshot(shots / "attention-L2H3.png")
    assert first != second

    # a real mouse click on head 1's thumbnail
    box = browser.evaluate(f"(() => {{ const r = {ROOT}.querySelector('.gbav-thumb[data-head=\"1\"]').getBoundingClientRect(); "
                           f"return [r.left + r.width / 2, r.top + r.height / 2]; }})()")
    browser.mouse("click", *box)
    assert browser.evaluate(f"[{ROOT}.dataset.layer, {ROOT}.dataset.head]") == ["2", "1"]
    assert browser.evaluate(f"{ROOT}.querySelector('.gbav-thumb.gbav-selected').dataset.head") == "1"
    _assert_drawn(browser, p[2, 1], "after clicking L2H1")
    # every thumbnail shows its own head
    for h in range(4):
        got = _pixels(browser, len(NASTY), len(NASTY), f".gbav-thumb[data-head=\"{h}\"] canvas")
        exp, _ = _expected_pixels(p[2, h])
        assert (np.abs(got - exp) <= 2).all(-1).mean() > 0.99, f"thumbnail {h}"

    # hover: weight and the (query, key) token pair
    q, k = 7, 2
    box = browser.evaluate(f"(() => {{ const c = {ROOT}.querySelector('canvas.gbav-canvas').getBoundingClientRect(); "
                           f"return [c.left, c.top, c.width, c.height]; }})()")
    n = len(NASTY)
    browser.mouse("move", box[0] + (k + 0.5) * box[2] / n, box[1] + (q + 0.5) * box[3] / n)
    tip = browser.evaluate(f"{ROOT}.querySelector('.gbav-tooltip').textContent")
    assert tip.splitlines() == ["L2H1", f"query {q}: {json.dumps(NASTY[q])}", f"key   {k}: {json.dumps(NASTY[k])}",
                                f"weight {rounded(p[2, 1, q, k]):.3f}"], tip
    hl_q = browser.evaluate(f"Array.from({ROOT}.querySelectorAll('.gbav-ylabels .gbav-hl')).map(e => e.textContent)")
    hl_k = browser.evaluate(f"Array.from({ROOT}.querySelectorAll('.gbav-xlabels .gbav-hl')).map(e => e.textContent)")
    assert (hl_q, hl_k) == ([shown(NASTY[q])], [shown(NASTY[k])])
    browser.screenshot(shots / "attention-hover.png")

    # keyboard: down = next layer, left = previous head
    browser.evaluate(f"{ROOT}.focus()")
    browser.key("ArrowDown", 40)
    assert browser.evaluate(f"[{ROOT}.dataset.layer, {ROOT}.dataset.head]") == ["2", "1"]  # already the last layer
    browser.key("ArrowUp", 38)
    browser.key("ArrowLeft", 37)
    assert browser.evaluate(f"[{ROOT}.dataset.layer, {ROOT}.dataset.head]") == ["1", "0"]
    _assert_drawn(browser, p[1, 0], "after keys")
    # selectors
    browser.evaluate(f"(() => {{ const s = {ROOT}.querySelector('select.gbav-layer'); s.value = '0'; s.dispatchEvent(new Event('change')); }})()")
    browser.evaluate(f"(() => {{ const s = {ROOT}.querySelector('select.gbav-head'); s.value = '2'; s.dispatchEvent(new Event('change')); }})()")
    assert browser.evaluate(f"[{ROOT}.dataset.layer, {ROOT}.dataset.head]") == ["0", "2"]
    _assert_drawn(browser, p[0, 2], "after the selectors")
    browser.evaluate(f"(() => {{ const s = {ROOT}.querySelector('select.gbav-gamma'); s.value = '1'; s.dispatchEvent(new Event('change')); }})()")
    _assert_drawn(browser, p[0, 2], "sqrt colour scale", gamma=0.5)
    # hash changes while open
    browser.evaluate("location.hash = 'layer=1&head=3'")
    browser.evaluate("new Promise(r => setTimeout(r, 50))")
    assert browser.evaluate(f"[{ROOT}.dataset.layer, {ROOT}.dataset.head]") == ["1", "3"]
    assert browser.errors() == []


@needs_browser
def test_model_views_in_browser(browser, zoo, tmp_path, shots):
    """A GPT-2 cache view and a GQA Llama view side by side on one page, as two notebook outputs:
    independent ids and state, no errors, GQA heads labelled with their kv head."""
    model, tokens, cache = gpt2_cache(zoo)
    gpt2 = attention_view(cache, tokens, title="gpt2-odd")
    llama = glassbox.HookedTransformer.from_pretrained(str(hl.save_folder(LLAMA, zoo.root / "llama" / LLAMA.key())))
    lt = np.random.default_rng(1).integers(0, LLAMA.vocab_size, size=(1, 16))
    glassbox.set_array_backend("numpy")
    try:
        _, lc = llama.run_with_cache(lt)
    finally:
        glassbox.set_array_backend("auto")
    gqa = attention_view(lc, lt, layer=1, head=4, title="llama gqa 9x3")
    url = _page(tmp_path, "two.html", gpt2._repr_html_() + "<hr>" + gqa._repr_html_())
    browser.goto(url)
    assert browser.errors() == []
    roots = browser.evaluate("Array.from(document.querySelectorAll('[data-ready]')).map(r => [r.id, r.dataset.layer, r.dataset.head, r.querySelector('.gbav-status').textContent])")
    assert len(roots) == 2 and roots[0][0] != roots[1][0]
    assert roots[0][1:] == ["0", "0", "L0H0"]
    assert roots[1][1:] == ["1", "4", "L1H4 (kv head 1)"]
    second = "document.querySelectorAll('[data-ready]')[1]"
    box = browser.evaluate(f"(() => {{ const t = {second}.querySelector('.gbav-thumb[data-head=\"8\"]'); "
                           f"t.scrollIntoView({{block: 'center'}}); const r = t.getBoundingClientRect(); "
                           f"return [r.left + r.width / 2, r.top + r.height / 2]; }})()")
    browser.mouse("click", *box)
    roots = browser.evaluate("Array.from(document.querySelectorAll('[data-ready]')).map(r => [r.dataset.layer, r.dataset.head])")
    assert roots == [["0", "0"], ["1", "8"]]
    labels = browser.evaluate(f"Array.from({second}.querySelectorAll('.gbav-ylabels .gbav-tok')).map(e => e.textContent)")
    assert labels == [str(i) for i in lt[0]]  # the fixture has no tokenizer: ids
    browser.screenshot(shots / "attention-two-views.png")
    assert browser.errors() == []


def test_notebook_outputs(tmp_path):
    """In a real Jupyter kernel (nbclient + ipykernel), a view as a cell's value gives a text/html
    output holding its fragment (what the notebook page then renders) and the text/plain repr."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    root = Path(__file__).resolve().parent.parent
    cells = [
        "import sys; sys.path.insert(0, %r)\n" % str(root)
        + "import numpy as np\nfrom glassbox.visualization import AttentionView\n"
        "p = np.tril(np.ones((4, 4), np.float32)); p /= p.sum(-1, keepdims=True)\n"
        "AttentionView(np.stack([p, p])[None], ['a', '<b>', 'c', 'd'], [0])",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    out = nb.cells[0].outputs[0]
    assert out["output_type"] == "execute_result"
    html = out["data"]["text/html"]
    assert html.startswith('<div class="gbav-wrap">') and "<script>" in html and "\\u003cb\\u003e" in html
    assert "AttentionView(1 layers x 2 heads" in out["data"]["text/plain"]
