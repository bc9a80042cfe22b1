/* The import form's column mapping, as a step once a file is chosen: the file's headers, each with a
   target (attribute, external_id, locale, time zone, skip) and a type, above its first five rows.
   The choices are written to the "Columns" text (the form the API takes), which stays editable. */
(function () {
  "use strict";

  var TARGETS = [["attribute", "attribute"], ["external_id", "external_id"], ["locale", "locale"], ["timezone", "time zone"], ["skip", "skip"]];
  var TYPES = ["auto", "string", "number", "boolean", "date"];

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else if (key === "className") node.className = attrs[key];
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) { node.appendChild(child); });
    return node;
  }

  function select(options, value, className) {
    var s = el("select", { className: className });
    options.forEach(function (o) {
      var option = el("option", { value: o[0], text: o[1] });
      if (o[0] === value) option.selected = true;
      s.appendChild(option);
    });
    return s;
  }

  // The separators imports read, in the order a tie goes (as the server's import does).
  var SEPARATORS = [",", ";", "\t"];

  // The file's separator, found as the import finds it: a first "sep=X" line names it (and is
  // skipped); otherwise the header line read with each separator, the one naming external_id first,
  // then the one making the most columns. Returns the text from the header on and the separator.
  function detectSeparator(text) {
    var lines = text.split(/\r\n|\n|\r/);
    var at = 0;
    while (at < lines.length && !lines[at].trim()) at++;
    var first = lines[at] || "";
    var named = /^sep=(.)$/i.exec(first);
    if (named && SEPARATORS.indexOf(named[1]) >= 0) {
      return { separator: named[1], text: lines.slice(at + 1).join("\n") };
    }
    var best = null, bestRank = null;
    SEPARATORS.forEach(function (separator, order) {
      var cells = parseCsv(first, 1, separator)[0] || [];
      var names = cells.some(function (cell) { return cell.trim() === "external_id"; }) ? 1 : 0;
      var rank = [names, cells.length, -order];
      if (!bestRank || rank[0] > bestRank[0] || (rank[0] === bestRank[0] && (rank[1] > bestRank[1] || (rank[1] === bestRank[1] && rank[2] > bestRank[2])))) {
        best = separator; bestRank = rank;
      }
    });
    return { separator: best, text: text };
  }

  // RFC 4180 records: quotes, doubled quotes, separators and newlines inside quotes.
  function parseCsv(text, limit, separator) {
    var rows = [], row = [], cell = "", quoted = false, i = 0;
    for (; i < text.length && rows.length < limit; i++) {
      var c = text[i];
      if (quoted) {
        if (c === '"' && text[i + 1] === '"') { cell += '"'; i++; }
        else if (c === '"') quoted = false;
        else cell += c;
      } else if (c === '"') quoted = true;
      else if (c === separator) { row.push(cell); cell = ""; }
      else if (c === "\n" || c === "\r") {
        if (c === "\r" && text[i + 1] === "\n") i++;
        row.push(cell); cell = "";
        if (row.length > 1 || row[0] !== "") rows.push(row);
        row = [];
      } else cell += c;
    }
    if (rows.length < limit && (cell !== "" || row.length)) { row.push(cell); rows.push(row); }
    return rows;
  }

  function guessTarget(header) {
    var h = header.trim().toLowerCase();
    if (h === "external_id") return "external_id";
    if (h === "locale" || h === "timezone") return h;
    return "attribute";
  }

  function render(box, textarea, rows) {
    box.innerHTML = "";
    if (!rows.length) { box.appendChild(el("p", { className: "errornote", text: "The file has no header row." })); return; }
    var headers = rows[0];
    var table = el("table", { className: "import-mapping" });
    table.appendChild(el("thead", {}, [el("tr", {}, [el("th", { text: "column" }), el("th", { text: "goes to" }), el("th", { text: "name" }), el("th", { text: "type" })])]));
    var body = el("tbody");
    headers.forEach(function (header) {
      var target = select(TARGETS, guessTarget(header), "mapping-target");
      var name = el("input", { type: "text", className: "mapping-name", value: header.trim(), size: "16" });
      var type = select(TYPES.map(function (t) { return [t, t]; }), "auto", "mapping-type");
      var row = el("tr", { "data-column": header }, [el("td", { text: header }), el("td", {}, [target]), el("td", {}, [name]), el("td", {}, [type])]);
      [target, name, type].forEach(function (input) { input.addEventListener("change", write); input.addEventListener("input", write); });
      body.appendChild(row);
    });
    table.appendChild(body);
    box.appendChild(el("p", { text: "Map each column of the file:" }));
    box.appendChild(table);
    var preview = el("table", { className: "import-preview" });
    preview.appendChild(el("thead", {}, [el("tr", {}, headers.map(function (h) { return el("th", { text: h }); }))]));
    var previewBody = el("tbody");
    rows.slice(1, 6).forEach(function (cells) {
      previewBody.appendChild(el("tr", {}, headers.map(function (_, i) { return el("td", { text: cells[i] || "" }); })));
    });
    preview.appendChild(previewBody);
    box.appendChild(el("p", { text: "The first " + Math.min(5, rows.length - 1) + " rows:" }));
    box.appendChild(preview);

    function write() {
      var lines = [];
      body.querySelectorAll("tr").forEach(function (row) {
        var column = row.dataset.column.trim();
        var target = row.querySelector(".mapping-target").value;
        var name = row.querySelector(".mapping-name");
        var type = row.querySelector(".mapping-type");
        name.disabled = target !== "attribute";
        type.disabled = target === "skip" || target === "external_id";
        if (target === "skip") lines.push(column + " = skip");
        else if (target !== "attribute") { if (column !== target) lines.push(column + " -> " + target); }
        else {
          var wanted = name.value.trim() || column;
          if (wanted !== column) lines.push(column + " -> " + wanted + (type.value !== "auto" ? " : " + type.value : ""));
          else if (type.value !== "auto") lines.push(column + " = " + type.value);
        }
      });
      textarea.value = lines.join("\n");
    }
    write();
  }

  function start() {
    var file = document.getElementById("id_file");
    var textarea = document.getElementById("id_columns_text");
    if (!file || !textarea) return;
    var box = el("div", { className: "import-mapping-step" });
    var row = textarea.closest(".form-row") || textarea.parentNode;
    row.parentNode.insertBefore(box, row);
    file.addEventListener("change", function () {
      var chosen = file.files && file.files[0];
      if (!chosen) { box.innerHTML = ""; return; }
      var reader = new FileReader();
      reader.onload = function () {
        var found = detectSeparator(String(reader.result).replace(/^\ufeff/, ""));
        render(box, textarea, parseCsv(found.text, 6, found.separator));
      };
      reader.readAsText(chosen.slice(0, 256 * 1024));
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
