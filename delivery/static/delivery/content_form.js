/* The push content form without JSON: custom data as key/value rows, locale variants as tabs, and
   previews that follow the form as one types (nothing is saved). The JSON stays one click away. */
(function () {
  "use strict";

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else if (key === "className") node.className = attrs[key];
      else if (key.indexOf("on") === 0) node.addEventListener(key.slice(2), attrs[key]);
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) { node.appendChild(child); });
    return node;
  }

  function parse(textarea) {
    try { var value = JSON.parse(textarea.value || "{}"); return value && typeof value === "object" ? value : {}; }
    catch (e) { return null; }
  }

  function write(textarea, value) {
    textarea.value = JSON.stringify(value, null, 2);
    textarea.dispatchEvent(new Event("input", { bubbles: true }));
  }

  // Hide the JSON textarea in a <details> ("Edit as JSON") right after the form that replaces it.
  function tuck(textarea, editor) {
    var details = el("details", { className: "json-raw" }, [el("summary", { text: "Edit as JSON" })]);
    textarea.parentNode.insertBefore(editor, textarea);
    textarea.parentNode.insertBefore(details, textarea);
    details.appendChild(textarea);
    return details;
  }

  function keyValueRows(textarea) {
    var box = el("div", { className: "kv-editor" });
    tuck(textarea, box);
    function draw() {
      var data = parse(textarea);
      box.innerHTML = "";
      if (data === null) { box.appendChild(el("p", { className: "errornote", text: "Not valid JSON: fix it below." })); return; }
      var table = el("table", { className: "kv-rows" });
      var keys = Object.keys(data);
      function sync() {
        var result = {};
        table.querySelectorAll("tr.kv-row").forEach(function (row) {
          var key = row.querySelector(".kv-key").value.trim();
          if (key) result[key] = row.querySelector(".kv-value").value;
        });
        write(textarea, result);
      }
      function addRow(key, value) {
        var row = el("tr", { className: "kv-row" }, [
          el("td", {}, [el("input", { type: "text", className: "kv-key", placeholder: "key", value: key, oninput: sync })]),
          el("td", {}, [el("input", { type: "text", className: "kv-value", placeholder: "value (Liquid allowed)", value: value, size: "50", oninput: sync })]),
          el("td", {}, [el("button", { type: "button", className: "button kv-remove", text: "Remove", onclick: function () { row.remove(); sync(); } })]),
        ]);
        table.appendChild(row);
      }
      keys.forEach(function (key) { addRow(key, String(data[key])); });
      box.appendChild(table);
      box.appendChild(el("button", { type: "button", className: "button kv-add", text: "+ key", onclick: function () { addRow("", ""); } }));
    }
    textarea.addEventListener("change", draw);
    draw();
  }

  var FIELDS = ["title", "subtitle", "body"];

  function localeTabs(textarea, state, onTab) {
    var box = el("div", { className: "locale-tabs" });
    tuck(textarea, box);
    function defaultLocale() { var f = document.getElementById("id_default_locale"); return (f && f.value) || "default"; }
    function draw() {
      var variants = parse(textarea);
      box.innerHTML = "";
      if (variants === null) { box.appendChild(el("p", { className: "errornote", text: "Not valid JSON: fix it below." })); return; }
      var locales = [defaultLocale()].concat(Object.keys(variants).sort());
      if (locales.indexOf(state.locale) === -1) state.locale = locales[0];
      var bar = el("div", { className: "locale-tab-bar", role: "tablist" });
      locales.forEach(function (locale, index) {
        bar.appendChild(el("button", {
          type: "button", role: "tab", "data-locale": locale,
          className: "button locale-tab" + (locale === state.locale ? " active" : ""),
          "aria-selected": locale === state.locale ? "true" : "false",
          text: index === 0 ? locale + " (default)" : locale,
          onclick: function () { state.locale = locale; draw(); onTab(); },
        }));
      });
      var input = el("input", { type: "text", placeholder: "locale, e.g. fr", size: "8", className: "locale-new" });
      bar.appendChild(input);
      bar.appendChild(el("button", { type: "button", className: "button locale-add", text: "+ locale", onclick: function () {
        var locale = input.value.trim();
        if (!locale || locale === defaultLocale() || variants[locale]) return;
        variants[locale] = { title: "", subtitle: "", body: "" };
        state.locale = locale;
        write(textarea, variants); draw(); onTab();
      } }));
      box.appendChild(bar);
      var panel = el("div", { className: "locale-panel", role: "tabpanel" });
      if (state.locale === locales[0]) {
        panel.appendChild(el("p", { text: "The default locale's texts are the Title, Subtitle and Body fields above." }));
      } else {
        var variant = variants[state.locale] || {};
        FIELDS.forEach(function (name) {
          var field = name === "body"
            ? el("textarea", { rows: "3", cols: "80", className: "vTextField locale-" + name })
            : el("input", { type: "text", size: "80", className: "vTextField locale-" + name });
          field.value = variant[name] || "";
          field.addEventListener("input", function () {
            variants[state.locale] = Object.assign({}, variants[state.locale] || {}, { [name]: field.value });
            write(textarea, variants);
          });
          panel.appendChild(el("p", {}, [el("label", { text: name.charAt(0).toUpperCase() + name.slice(1) + " (" + state.locale + ")" }), el("br"), field]));
        });
        panel.appendChild(el("button", { type: "button", className: "button locale-remove", text: "Remove " + state.locale, onclick: function () {
          delete variants[state.locale]; state.locale = locales[0]; write(textarea, variants); draw(); onTab();
        } }));
      }
      box.appendChild(panel);
    }
    textarea.addEventListener("change", draw);
    var defaultField = document.getElementById("id_default_locale");
    if (defaultField) defaultField.addEventListener("input", draw);
    draw();
  }

  function livePreviews(form, state) {
    var box = document.querySelector(".content-previews");
    if (!box || !box.dataset.previewUrl) return function () {};
    var timer = null;
    function refresh() {
      var data = new FormData(form);
      data.set("preview_locale", state.locale || "");
      var chooser = document.getElementById("preview-profile");
      data.set("preview_profile", chooser ? chooser.value : "");
      fetch(box.dataset.previewUrl, { method: "POST", body: data, credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) { if (html !== null) { box.innerHTML = html; box.dataset.locale = state.locale || ""; } });
    }
    function soon() { window.clearTimeout(timer); timer = window.setTimeout(refresh, 250); }
    form.addEventListener("input", soon);
    form.addEventListener("change", soon);
    return refresh;
  }

  function start() {
    var form = document.getElementById("pushcontent_form");
    if (!form) return;
    var state = { locale: "" };
    var refresh = livePreviews(form, state);
    var data = document.getElementById("id_data");
    if (data) keyValueRows(data);
    var variants = document.getElementById("id_variants");
    if (variants) localeTabs(variants, state, refresh);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
