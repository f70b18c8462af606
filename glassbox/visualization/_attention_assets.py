"""CSS and JavaScript of the interactive attention view, inlined into every page (no network).

``__ROOT__`` is replaced by the view's element id; every CSS rule is scoped under it, so several
views (or a notebook's own styles) do not interfere. The script reads its data from the JSON
``<script type="application/json" id="__ROOT__-data">`` element, decodes one layer at a time
(varint weights, see :mod:`glassbox.visualization.attention_data`), and keeps the selection in
``data-layer`` / ``data-head`` attributes of the root element. Tokens are only ever written with
``textContent``, never as markup.
"""

CSS = r"""
#__ROOT__ { font: 13px/1.35 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1a1a1a;
  background: #fff; padding: 8px; border: 1px solid #ddd; border-radius: 6px; max-width: 100%;
  box-sizing: border-box; outline: none; position: relative; }
#__ROOT__ .gbav-title { font-weight: 600; margin: 0 0 6px 0; }
#__ROOT__ .gbav-controls { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin-bottom: 8px; }
#__ROOT__ .gbav-controls label { display: inline-flex; gap: 4px; align-items: center; }
#__ROOT__ select { font: inherit; padding: 1px 4px; }
#__ROOT__ .gbav-status { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; color: #333; }
#__ROOT__ .gbav-body { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
#__ROOT__ .gbav-main { display: grid; grid-template-columns: auto auto; grid-template-rows: auto auto;
  overflow: auto; max-width: 100%; max-height: 82vh; }
#__ROOT__ .gbav-xlabels { position: relative; height: 104px; overflow: hidden; }
#__ROOT__ .gbav-ylabels { position: relative; }
#__ROOT__ .gbav-tok { position: absolute; white-space: pre; overflow: hidden; text-overflow: ellipsis;
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; color: #222; }
#__ROOT__ .gbav-ylabels .gbav-tok { right: 4px; max-width: 180px; text-align: right; }
#__ROOT__ .gbav-xlabels .gbav-tok { bottom: 2px; transform-origin: 0 100%; transform: rotate(-90deg); max-width: 100px; }
#__ROOT__ .gbav-tok.gbav-hl { color: #c0392b; font-weight: 700; }
#__ROOT__ .gbav-axis { font-size: 11px; color: #666; }
#__ROOT__ canvas.gbav-canvas { display: block; cursor: crosshair; image-rendering: pixelated; }
#__ROOT__ .gbav-side { display: flex; flex-direction: column; gap: 8px; }
#__ROOT__ .gbav-grid { display: grid; gap: 6px; }
#__ROOT__ .gbav-thumb { display: flex; flex-direction: column; align-items: center; cursor: pointer;
  padding: 2px; border: 2px solid transparent; border-radius: 4px; background: none; font: inherit; }
#__ROOT__ .gbav-thumb:hover { border-color: #9ecae1; }
#__ROOT__ .gbav-thumb.gbav-selected { border-color: #c0392b; }
#__ROOT__ .gbav-thumb canvas { image-rendering: pixelated; border: 1px solid #ccc; }
#__ROOT__ .gbav-thumb span { font-size: 11px; color: #444; }
#__ROOT__ .gbav-legend { display: flex; align-items: center; gap: 6px; font-size: 11px; color: #555; }
#__ROOT__ .gbav-legend canvas { border: 1px solid #ccc; }
#__ROOT__ .gbav-tooltip { position: absolute; pointer-events: none; background: rgba(20,20,20,0.92); color: #fff;
  padding: 4px 7px; border-radius: 4px; font-size: 12px; white-space: pre; display: none; z-index: 10;
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
#__ROOT__ .gbav-error { color: #b00020; font-weight: 600; }
#__ROOT__ .gbav-hint { font-size: 11px; color: #777; }
"""

JS = r"""
(function () {
  "use strict";
  var ROOT_ID = "__ROOT__";
  var root = document.getElementById(ROOT_ID);
  if (!root || root.getAttribute("data-ready")) { return; }
  var data = JSON.parse(document.getElementById(ROOT_ID + "-data").textContent);
  var NL = data.layers.length, H = data.heads, Q = data.nq, K = data.nk, OFF = K - Q;

  function el(tag, cls, parent) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function find(cls) { return root.querySelector("." + cls); }

  // -- data: base64 varints, one layer at a time --------------------------------------------
  var bin = atob(data.data);
  var bytes = new Uint8Array(bin.length);
  for (var i = 0; i < bin.length; i++) { bytes[i] = bin.charCodeAt(i); }
  bin = null;
  var cache = {};
  function layerData(li) {
    if (cache[li]) { return cache[li]; }
    var pos = data.offsets[li], end = data.offsets[li + 1];
    var mats = [];
    for (var h = 0; h < H; h++) {
      var m = new Float32Array(Q * K);
      for (var q = 0; q < Q; q++) {
        var kmax = data.causal ? Math.min(K, q + OFF + 1) : K;
        for (var k = 0; k < kmax; k++) {
          var v = 0, shift = 0, b;
          do { b = bytes[pos++]; v += (b & 127) * Math.pow(2, shift); shift += 7; } while (b & 128);
          m[q * K + k] = v / data.scale;
        }
      }
      mats.push(m);
    }
    if (pos !== end) { throw new Error("attention view: layer " + li + " data is corrupt (" + pos + " != " + end + ")"); }
    var keys = Object.keys(cache);
    if (keys.length >= 8) { delete cache[keys[0]]; }
    cache[li] = mats;
    return mats;
  }

  // -- tokens as text (control characters escaped, blank tokens visible) ---------------------
  function shown(t) {
    var s = "";
    for (var i = 0; i < t.length; i++) {
      var c = t.charAt(i), code = t.charCodeAt(i);
      if (c === "\n") { s += "\\n"; } else if (c === "\t") { s += "\\t"; } else if (c === "\r") { s += "\\r"; }
      else if (code < 32 || code === 127) { s += "\\x" + (code < 16 ? "0" : "") + code.toString(16); }
      else { s += c; }
    }
    if (s.length === 0) { return "\u2205"; }
    if (/^ +$/.test(s)) { return s.replace(/ /g, "\u2423"); }
    return s;
  }
  var qTok = data.tokens.slice(OFF), kTok = data.tokens;

  // -- colours --------------------------------------------------------------------------------
  var lut = [];
  (function () {
    var lo = [255, 255, 255], hi = [8, 48, 107], mid = [107, 174, 214];
    for (var i = 0; i <= 255; i++) {
      var t = i / 255, c;
      if (t < 0.5) { c = [0, 1, 2].map(function (j) { return lo[j] + (mid[j] - lo[j]) * t * 2; }); }
      else { c = [0, 1, 2].map(function (j) { return mid[j] + (hi[j] - mid[j]) * (t - 0.5) * 2; }); }
      lut.push(c.map(Math.round));
    }
  })();
  var MASKED = [236, 236, 236];
  var state = { layer: 0, head: 0, gamma: 1, q: -1, k: -1 };
  function colour(w) {
    var t = state.gamma === 1 ? w : Math.sqrt(w);
    return lut[Math.max(0, Math.min(255, Math.round(t * 255)))];
  }
  function paint(canvas, m) {
    canvas.width = K; canvas.height = Q;
    var ctx = canvas.getContext("2d");
    var img = ctx.createImageData(K, Q);
    for (var q = 0; q < Q; q++) {
      for (var k = 0; k < K; k++) {
        var c = (data.causal && k > q + OFF) ? MASKED : colour(m[q * K + k]);
        var o = 4 * (q * K + k);
        img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
  }

  // -- layout -----------------------------------------------------------------------------------
  root.innerHTML = "";
  root.setAttribute("tabindex", "0");
  if (data.title) { el("div", "gbav-title", root).textContent = data.title; }
  var controls = el("div", "gbav-controls", root);
  function selector(label, options, cls) {
    var lab = el("label", null, controls);
    lab.appendChild(document.createTextNode(label + " "));
    var s = el("select", cls, lab);
    options.forEach(function (o, i) { var opt = el("option", null, s); opt.value = String(i); opt.textContent = o; });
    return s;
  }
  var layerSel = selector("Layer", data.layers.map(String), "gbav-layer");
  var headSel = selector("Head", data.headLabels[0], "gbav-head");
  var gammaSel = selector("Colour", ["linear", "sqrt"], "gbav-gamma");
  var status = el("span", "gbav-status", controls);
  var body = el("div", "gbav-body", root);
  var main = el("div", "gbav-main", body);
  el("div", "gbav-axis", main).textContent = "query \u2193  key \u2192";
  var xl = el("div", "gbav-xlabels", main);
  var yl = el("div", "gbav-ylabels", main);
  var canvas = el("canvas", "gbav-canvas", main);
  var side = el("div", "gbav-side", body);
  var legend = el("div", "gbav-legend", side);
  var grid = el("div", "gbav-grid", side);
  var hint = el("div", "gbav-hint", side);
  hint.textContent = "hover a cell for its weight; click a head to select it; \u2190/\u2192 head, \u2191/\u2193 layer";
  var tip = el("div", "gbav-tooltip", root);

  var CELL = Math.max(2, Math.min(26, Math.floor(720 / Math.max(Q, K))));
  var LABELS = CELL >= 9;
  var FONT = Math.min(12, CELL - 1);
  canvas.style.width = (K * CELL) + "px";
  canvas.style.height = (Q * CELL) + "px";
  xl.style.width = (K * CELL) + "px";
  yl.style.height = (Q * CELL) + "px";
  var qLabels = [], kLabels = [];
  if (LABELS) {
    var longest = qTok.reduce(function (m, t) { return Math.max(m, shown(t).length); }, 1);
    yl.style.width = Math.min(190, Math.ceil(10 + 0.62 * FONT * longest)) + "px";
    qTok.forEach(function (t, q) {
      var d = el("div", "gbav-tok", yl);
      d.textContent = shown(t);
      d.style.top = (q * CELL) + "px"; d.style.height = CELL + "px"; d.style.lineHeight = CELL + "px";
      d.style.fontSize = FONT + "px";
      qLabels.push(d);
    });
    kTok.forEach(function (t, k) {
      var d = el("div", "gbav-tok", xl);
      d.textContent = shown(t);
      d.style.left = (k * CELL + (CELL + FONT) / 2) + "px";
      d.style.fontSize = FONT + "px"; d.style.lineHeight = FONT + "px";
      kLabels.push(d);
    });
  } else {
    yl.style.width = "0px";
    xl.style.height = "4px";
  }
  var cols = Math.ceil(Math.sqrt(H * 1.3));
  var THUMB = Math.max(40, Math.min(96, Math.floor(440 / cols)));
  grid.style.gridTemplateColumns = "repeat(" + cols + ", auto)";
  var thumbs = [];
  for (var h = 0; h < H; h++) {
    var btn = el("button", "gbav-thumb", grid);
    btn.type = "button";
    btn.setAttribute("data-head", String(h));
    var c = el("canvas", null, btn);
    c.style.width = THUMB + "px";
    c.style.height = Math.max(8, Math.round(THUMB * Q / K)) + "px";
    el("span", null, btn);
    btn.addEventListener("click", (function (hh) { return function () { select(state.layer, hh); root.focus(); }; })(h));
    thumbs.push(btn);
  }
  var lg = el("canvas", null, legend);
  lg.width = 120; lg.height = 10;
  function drawLegend() {
    var ctx = lg.getContext("2d");
    for (var x = 0; x < 120; x++) { var cc = colour(x / 119); ctx.fillStyle = "rgb(" + cc.join(",") + ")"; ctx.fillRect(x, 0, 1, 10); }
  }
  legend.insertBefore(document.createTextNode("0"), lg);
  legend.appendChild(document.createTextNode("1  (weight" + (data.digits ? ", rounded to " + data.digits + " digits" : "") + ")"));

  // -- drawing ----------------------------------------------------------------------------------
  function headName(li, h) {
    return data.headLabels[li][h] + (data.kvGroup > 1 ? " (kv head " + Math.floor(h / data.kvGroup) + ")" : "");
  }
  function draw() {
    var mats = layerData(state.layer);
    paint(canvas, mats[state.head]);
    for (var h = 0; h < H; h++) {
      paint(thumbs[h].querySelector("canvas"), mats[h]);
      thumbs[h].querySelector("span").textContent = data.headLabels[state.layer][h];
      thumbs[h].title = headName(state.layer, h);
      thumbs[h].className = "gbav-thumb" + (h === state.head ? " gbav-selected" : "");
    }
    drawLegend();
    status.textContent = headName(state.layer, state.head);
  }
  function select(li, h) {
    li = Math.max(0, Math.min(NL - 1, li)); h = Math.max(0, Math.min(H - 1, h));
    if (data.headLabels[li].length !== headSel.options.length || li !== state.layer) {
      headSel.innerHTML = "";
      data.headLabels[li].forEach(function (o, i) { var opt = el("option", null, headSel); opt.value = String(i); opt.textContent = o; });
    }
    state.layer = li; state.head = h;
    layerSel.value = String(li); headSel.value = String(h);
    root.setAttribute("data-layer", String(data.layers[li]));
    root.setAttribute("data-head", String(h));
    draw();
  }
  layerSel.addEventListener("change", function () { select(parseInt(layerSel.value, 10), state.head); });
  headSel.addEventListener("change", function () { select(state.layer, parseInt(headSel.value, 10)); });
  gammaSel.addEventListener("change", function () { state.gamma = gammaSel.value === "1" ? 0.5 : 1; draw(); });
  root.addEventListener("keydown", function (ev) {
    var d = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] }[ev.key];
    if (!d || ev.target.tagName === "SELECT") { return; }
    ev.preventDefault();
    select(state.layer + d[0], state.head + d[1]);
  });

  // -- hover ------------------------------------------------------------------------------------
  function highlight(q, k) {
    if (state.q >= 0 && qLabels[state.q]) { qLabels[state.q].classList.remove("gbav-hl"); }
    if (state.k >= 0 && kLabels[state.k]) { kLabels[state.k].classList.remove("gbav-hl"); }
    state.q = q; state.k = k;
    if (q >= 0 && qLabels[q]) { qLabels[q].classList.add("gbav-hl"); }
    if (k >= 0 && kLabels[k]) { kLabels[k].classList.add("gbav-hl"); }
  }
  canvas.addEventListener("mousemove", function (ev) {
    var r = canvas.getBoundingClientRect();
    var k = Math.floor((ev.clientX - r.left) / r.width * K), q = Math.floor((ev.clientY - r.top) / r.height * Q);
    if (q < 0 || q >= Q || k < 0 || k >= K) { return; }
    var w = layerData(state.layer)[state.head][q * K + k];
    var masked = data.causal && k > q + OFF;
    tip.textContent = headName(state.layer, state.head) + "\n" +
      "query " + (q + OFF) + ": " + JSON.stringify(qTok[q]) + "\n" +
      "key   " + k + ": " + JSON.stringify(kTok[k]) + "\n" +
      (masked ? "masked (future key)" : "weight " + w.toFixed(Math.min(4, data.digits)));
    tip.style.display = "block";
    var rr = root.getBoundingClientRect();
    tip.style.left = (ev.clientX - rr.left + 14) + "px";
    tip.style.top = (ev.clientY - rr.top + 14) + "px";
    highlight(q, k);
  });
  canvas.addEventListener("mouseleave", function () { tip.style.display = "none"; highlight(-1, -1); });

  // -- initial selection: data.init, or #layer=L&head=H in the page's address ---------------------
  function fromHash() {
    var m = /(?:^|[#&])layer=(\d+)/.exec(location.hash), n = /(?:^|[#&])head=(\d+)/.exec(location.hash);
    if (!m && !n) { return null; }
    var li = m ? data.layers.indexOf(parseInt(m[1], 10)) : state.layer;
    return [li < 0 ? state.layer : li, n ? parseInt(n[1], 10) : state.head];
  }
  var init = fromHash() || [data.init.layer, data.init.head];
  try {
    select(init[0], init[1]);
  } catch (err) {
    el("div", "gbav-error", root).textContent = String(err);
    throw err;
  }
  window.addEventListener("hashchange", function () { var s = fromHash(); if (s) { select(s[0], s[1]); } });
  root.setAttribute("data-ready", "1");
})();
"""
