/* The attention explorer's script (mini_gpt/viz/html_export.py): the page calls
   mgptAttentionExplorer(rootId) with the id of the explorer's root element; the data (tokens,
   weights, colour scale) is the JSON in the root's data-mgpt="data" element. Plain ES5. */
/* exported mgptAttentionExplorer */
function mgptAttentionExplorer(rootId) {
  "use strict";
  // find this explorer's own root: the parent of this script, or (when the script was run
  // with eval, e.g. by the classic notebook) the first root with this id not yet set up
  var root = null, me = document.currentScript;
  if (me && me.parentNode && me.parentNode.id === rootId && !me.parentNode.getAttribute("data-mgpt-ready")) {
    root = me.parentNode;
  } else {
    var found = document.querySelectorAll("div[id='" + rootId + "']");
    for (var n = 0; n < found.length; n++) {
      if (!found[n].getAttribute("data-mgpt-ready")) { root = found[n]; break; }
    }
  }
  if (!root) { return; }
  root.setAttribute("data-mgpt-ready", "1");

  var D = JSON.parse(root.querySelector("script[type='application/json']").textContent);
  var T = D.tokens.length, L = D.n_layer, H = D.n_head;
  var layerSel = root.querySelector("select[data-mgpt='layer']");
  var headSel = root.querySelector("select[data-mgpt='head']");
  var canvas = root.querySelector("canvas");
  var info = root.querySelector("[data-mgpt='info']");
  var HINT = "Hover over a cell: row = query (the token attending), column = key (the token attended to).";

  function addOption(sel, value, text) {
    var o = document.createElement("option");
    o.value = String(value); o.textContent = text; sel.appendChild(o);
  }
  for (var l = 0; l < L; l++) { addOption(layerSel, l, String(l)); }
  for (var h = 0; h < H; h++) { addOption(headSel, h, String(h)); }
  addOption(headSel, "mean", "mean of heads");
  layerSel.value = String(D.layer);
  headSel.value = String(D.head);

  var STOPS = D.stops;  // viridis at 0, 1/8, ..., 1: [[r, g, b], ...]
  function color(w) {
    var x = Math.max(0, Math.min(1, w)) * (STOPS.length - 1);
    var i = Math.min(STOPS.length - 2, Math.floor(x)), f = x - i, a = STOPS[i], b = STOPS[i + 1];
    return "rgb(" + Math.round(a[0] + f * (b[0] - a[0])) + "," + Math.round(a[1] + f * (b[1] - a[1])) +
      "," + Math.round(a[2] + f * (b[2] - a[2])) + ")";
  }

  function matrix() {
    var layer = D.weights[+layerSel.value];
    if (headSel.value !== "mean") { return layer[+headSel.value]; }
    var rows = [];
    for (var i = 0; i < T; i++) {
      var row = [];
      for (var j = 0; j <= i; j++) {
        var s = 0;
        for (var k = 0; k < H; k++) { s += layer[k][i][j]; }
        row.push(s / H);
      }
      rows.push(row);
    }
    return rows;
  }

  function short(label) { return label.length > 12 ? label.slice(0, 11) + "\u2026" : label; }

  // geometry (fixed for this prompt)
  var cell = Math.max(6, Math.min(28, Math.floor(480 / T)));
  var fontPx = 12, every = Math.max(1, Math.ceil((fontPx + 1) / cell));
  var ctx = canvas.getContext("2d");
  var LABEL_FONT = fontPx + "px 'DejaVu Sans Mono', Menlo, Consolas, monospace";
  var TEXT_FONT = "12px system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', Arial, sans-serif";
  ctx.font = LABEL_FONT;
  var labelW = 0;
  for (var t = 0; t < T; t++) { labelW = Math.max(labelW, ctx.measureText(short(D.tokens[t])).width); }
  var grid = T * cell;
  var left = Math.ceil(labelW) + 28, top = 10, bottom = Math.ceil(labelW) + 30;
  var barX = left + grid + 18, barW = 12, barH = Math.max(grid, 120);
  var W = Math.max(barX + barW + 44, 260), Hgt = top + Math.max(grid, barH) + bottom;
  var dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(W * dpr); canvas.height = Math.round(Hgt * dpr);
  canvas.style.width = W + "px"; canvas.style.height = Hgt + "px";
  canvas.setAttribute("data-cell", cell); canvas.setAttribute("data-left", left); canvas.setAttribute("data-top", top);
  var base = document.createElement("canvas");
  base.width = canvas.width; base.height = canvas.height;
  var current = null, hover = null;

  function drawBase() {
    current = matrix();
    var g = base.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.fillStyle = "#fff"; g.fillRect(0, 0, W, Hgt);
    for (var i = 0; i < T; i++) {
      for (var j = 0; j <= i; j++) {
        g.fillStyle = color(current[i][j]);
        g.fillRect(left + j * cell, top + i * cell, cell, cell);
      }
    }
    // the masked upper triangle stays empty: only the matrix outline marks it
    g.strokeStyle = "#bbb"; g.lineWidth = 1;
    g.strokeRect(left - 0.5, top - 0.5, grid + 1, grid + 1);
    g.fillStyle = "#222"; g.font = LABEL_FONT; g.textBaseline = "middle";
    for (var r = 0; r < T; r++) {
      if (r % every !== 0) { continue; }
      g.textAlign = "right";
      g.fillText(short(D.tokens[r]), left - 4, top + r * cell + cell / 2);
      g.save();
      g.translate(left + r * cell + cell / 2, top + grid + 4);
      g.rotate(-Math.PI / 2);
      g.fillText(short(D.tokens[r]), 0, 0);
      g.restore();
    }
    g.font = TEXT_FONT; g.fillStyle = "#555"; g.textAlign = "center";
    g.fillText("key (attended to)", Math.max(left + grid / 2, 70), Hgt - 8);
    g.save(); g.translate(9, top + Math.max(grid, barH) / 2); g.rotate(-Math.PI / 2);
    g.fillText("query (attending)", 0, 0); g.restore();
    // colour bar
    for (var y = 0; y < barH; y++) {
      g.fillStyle = color(1 - y / (barH - 1));
      g.fillRect(barX, top + y, barW, 1);
    }
    g.strokeStyle = "#999"; g.strokeRect(barX - 0.5, top - 0.5, barW + 1, barH + 1);
    g.fillStyle = "#222"; g.textAlign = "left";
    var ticks = [1, 0.75, 0.5, 0.25, 0];
    for (var k = 0; k < ticks.length; k++) {
      g.fillText(String(ticks[k]), barX + barW + 4, top + (1 - ticks[k]) * (barH - 1));
    }
  }

  function paint() {
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.drawImage(base, 0, 0);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    if (hover) {
      ctx.strokeStyle = hover[1] <= hover[0] ? "#ff2d55" : "#999"; ctx.lineWidth = 2;
      ctx.strokeRect(left + hover[1] * cell + 1, top + hover[0] * cell + 1, cell - 2, cell - 2);
    }
  }

  function describe() {
    if (!hover) { info.textContent = HINT; return; }
    var i = hover[0], j = hover[1];
    var q = "query #" + i + " \u201c" + D.tokens[i] + "\u201d", key = "key #" + j + " \u201c" + D.tokens[j] + "\u201d";
    if (j > i) {
      info.textContent = q + " \u2192 " + key + ": masked (a token never attends to later tokens)";
    } else {
      info.textContent = q + " \u2192 " + key + ": weight " + current[i][j].toFixed(4);
    }
  }

  function onPointer(e) {
    var box = canvas.getBoundingClientRect();
    var x = (e.clientX - box.left) * (W / box.width), y = (e.clientY - box.top) * (Hgt / box.height);
    var j = Math.floor((x - left) / cell), i = Math.floor((y - top) / cell);
    var next = (i >= 0 && i < T && j >= 0 && j < T) ? [i, j] : null;
    if (String(next) !== String(hover)) { hover = next; paint(); describe(); }
  }
  canvas.addEventListener("mousemove", onPointer);
  canvas.addEventListener("click", onPointer);
  canvas.addEventListener("mouseleave", function () { hover = null; paint(); describe(); });
  function redraw() { drawBase(); paint(); describe(); }
  layerSel.addEventListener("change", redraw);
  headSel.addEventListener("change", redraw);
  redraw();
}
