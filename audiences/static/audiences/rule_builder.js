/* The segment rule builder: edits the rule tree (JSON, in a hidden textarea) with nested groups
   and condition rows, so a marketer never writes JSON. The server validates on save; its error
   messages say in words where they are ("Group 2, condition 1 (age is more than): ..."), and the
   page gives this builder their paths (data-errors) to outline the nodes they are about. */
(function () {
  "use strict";

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else if (key === "className") node.className = attrs[key];
      else if (key.slice(0, 2) === "on") node.addEventListener(key.slice(2), attrs[key]);
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  function select(options, value, onchange, label) {
    var node = el("select", { onchange: function () { onchange(node.value); }, "aria-label": label || "" });
    options.forEach(function (opt) {
      var pair = Array.isArray(opt) ? opt : [opt, opt];
      var o = el("option", { value: String(pair[0]), text: pair[1] });
      if (String(pair[0]) === String(value)) o.selected = true;
      node.appendChild(o);
    });
    return node;
  }

  function input(type, value, onchange, attrs) {
    var node = el("input", Object.assign({ type: type }, attrs || {}));
    node.value = value === undefined || value === null ? "" : value;
    node.addEventListener("input", function () { onchange(node.value); });
    return node;
  }

  function datalist(id, values) {
    var list = el("datalist", { id: id });
    values.forEach(function (v) { list.appendChild(el("option", { value: v })); });
    return list;
  }

  var GROUPS = ["all", "any", "none"];
  var GROUP_LABELS = { all: "Match ALL of", any: "Match ANY of", none: "Match NONE of" };
  var KINDS = [
    ["attribute", "Attribute"],
    ["field", "Profile field"],
    ["event", "Event"],
    ["segment", "Segment"],
    ["reachable", "Opted-in device on"],
  ];

  function groupKey(node) {
    for (var i = 0; i < GROUPS.length; i++) if (Array.isArray(node[GROUPS[i]])) return GROUPS[i];
    return null;
  }

  function kindOf(node) {
    for (var i = 0; i < KINDS.length; i++) if (KINDS[i][0] in node) return KINDS[i][0];
    return "attribute";
  }

  function Builder(root) {
    this.root = root;
    this.input = root.boundInput || document.getElementById(root.dataset.input);
    this.meta = JSON.parse(root.dataset.meta || "{}");
    this.uid = root.dataset.input;
    var tree = null;
    try { tree = this.input.value ? JSON.parse(this.input.value) : null; } catch (e) { tree = null; }
    // A tree whose top level is one condition (as the API may save it) is shown as a group of one.
    this.wrapped = Boolean(tree && !groupKey(tree));
    if (!tree || !groupKey(tree)) tree = { all: tree ? [tree] : [] };
    this.tree = tree;
    this.attrTypes = {};
    var self = this;
    (this.meta.attributes || []).forEach(function (a) { self.attrTypes[a.name] = a.type; });
    this.propTypes = {};
    (this.meta.properties || []).forEach(function (a) { self.propTypes[a.name] = a.type; });
    root.parentNode.insertBefore(datalist(this.uid + "-attrs", Object.keys(this.attrTypes)), root);
    root.parentNode.insertBefore(datalist(this.uid + "-events", this.meta.events || []), root);
    root.parentNode.insertBefore(datalist(this.uid + "-props", Object.keys(this.propTypes)), root);
    this.render();
    this.markErrors();
  }

  Builder.prototype.sync = function () {
    this.input.value = JSON.stringify(this.tree);
    if (this.onchange) this.onchange(this.tree);
    var view = this.root.parentNode.querySelector(".rule-builder-json-view");
    if (view) view.textContent = JSON.stringify(this.tree, null, 2);
  };

  Builder.prototype.render = function () {
    this.root.innerHTML = "";
    this.root.appendChild(this.renderGroup(this.tree, null, "rules"));
    this.sync();
  };

  Builder.prototype.renderGroup = function (node, parent, path) {
    var self = this;
    var key = groupKey(node);
    var box = el("div", { className: "rb-group", "data-path": path });
    var head = el("div", { className: "rb-group-head" }, [
      select(GROUPS.map(function (g) { return [g, GROUP_LABELS[g]]; }), key, function (value) {
        node[value] = node[key];
        delete node[key];
        self.render();
      }, "group"),
      el("span", { className: "rb-label", text: "these conditions" }),
      el("button", { type: "button", className: "button", text: "+ condition", onclick: function () {
        node[key].push({ attribute: "", type: "string", op: "eq", value: "" });
        self.render();
      } }),
      el("button", { type: "button", className: "button", text: "+ group", onclick: function () {
        node[key].push({ any: [{ attribute: "", type: "string", op: "eq", value: "" }] });
        self.render();
      } }),
      parent ? el("button", { type: "button", className: "button rb-remove", text: "remove group", onclick: function () {
        parent.splice(parent.indexOf(node), 1);
        self.render();
      } }) : null,
    ]);
    var children = el("div", { className: "rb-children" });
    node[key].forEach(function (child, index) {
      var childPath = path + "." + key + "[" + index + "]";
      children.appendChild(groupKey(child) ? self.renderGroup(child, node[key], childPath) : self.renderCondition(child, node[key], childPath));
    });
    if (!node[key].length) children.appendChild(el("em", { className: "rb-label", text: "Empty: add a condition." }));
    box.appendChild(head);
    box.appendChild(children);
    return box;
  };

  Builder.prototype.renderCondition = function (node, parent, path) {
    var self = this;
    var row = el("div", { className: "rb-row", "data-path": path });
    var kind = kindOf(node);
    row.appendChild(select(KINDS, kind, function (value) {
      var fresh = {
        attribute: { attribute: "", type: "string", op: "eq", value: "" },
        field: { field: "locale", op: "eq", value: "" },
        event: { event: "", did: true, min_count: 1, within_days: 30 },
        segment: { segment: (self.meta.segments[0] || {}).id || 0, member: true },
        reachable: { reachable: { app: (self.meta.apps[0] || {}).id || 0, platform: "ios" } },
      }[value];
      parent[parent.indexOf(node)] = fresh;
      self.render();
    }, "condition kind"));
    if (kind === "attribute") this.attributeInputs(row, node, "attribute", this.attrTypes, this.uid + "-attrs");
    else if (kind === "field") this.fieldInputs(row, node);
    else if (kind === "event") this.eventInputs(row, node, path);
    else if (kind === "segment") this.segmentInputs(row, node);
    else this.reachableInputs(row, node);
    row.appendChild(el("button", { type: "button", className: "button rb-remove", text: "✕", title: "remove", onclick: function () {
      parent.splice(parent.indexOf(node), 1);
      self.render();
    } }));
    return row;
  };

  Builder.prototype.attributeInputs = function (row, node, nameKey, knownTypes, listId) {
    var self = this;
    var holder = el("span");
    var typeSelect = select(this.meta.types, node.type || "string", function (value) {
      node.type = value;
      self.fixOperator(node, value);
      self.redraw(holder, node, value);
      self.sync();
    }, "type");
    var name = input("text", node[nameKey], function (value) {
      node[nameKey] = value;
      if (knownTypes[value] && knownTypes[value] !== node.type) {
        node.type = knownTypes[value];
        typeSelect.value = node.type;
        self.fixOperator(node, node.type);
        self.redraw(holder, node, node.type);
      }
      self.sync();
    }, { list: listId, placeholder: nameKey + " name" });
    row.appendChild(name);
    row.appendChild(typeSelect);
    row.appendChild(holder);
    this.redraw(holder, node, node.type || "string");
  };

  Builder.prototype.fieldInputs = function (row, node) {
    var self = this;
    var holder = el("span");
    row.appendChild(select(Object.keys(this.meta.columns), node.field, function (value) {
      node.field = value;
      self.fixOperator(node, self.meta.columns[value]);
      self.redraw(holder, node, self.meta.columns[value]);
      self.sync();
    }, "field"));
    row.appendChild(holder);
    this.redraw(holder, node, this.meta.columns[node.field] || "string");
  };

  Builder.prototype.fixOperator = function (node, type) {
    var ops = this.meta.operators[type];
    if (ops.indexOf(node.op) < 0) node.op = ops[0];
    node.value = this.defaultValue(type, node.op);
    if (node.value === undefined) delete node.value;
  };

  Builder.prototype.defaultValue = function (type, op) {
    if (op === "exists" || op === "not_exists") return undefined;
    if (op === "in" || op === "not_in") return [];
    if (op === "between") return type === "date" ? [{ ago: 30, unit: "days" }, { ago: 0, unit: "days" }] : ["", ""];
    if (type === "number") return "";  // blank until typed: an empty number is refused, never read as 0
    if (type === "boolean") return true;
    if (type === "date") return { ago: 7, unit: "days" };
    return "";
  };

  Builder.prototype.redraw = function (holder, node, type) {
    var self = this;
    holder.innerHTML = "";
    holder.appendChild(select(this.meta.operators[type].map(function (op) { return [op, self.meta.labels[op] || op]; }), node.op, function (value) {
      node.op = value;
      node.value = self.defaultValue(type, value);
      if (node.value === undefined) delete node.value;
      self.redraw(holder, node, type);
      self.sync();
    }, "operator"));
    this.valueInputs(holder, node, type);
  };

  Builder.prototype.valueInputs = function (holder, node, type) {
    var self = this;
    var op = node.op;
    if (op === "exists" || op === "not_exists") return;
    function parse(raw) {
      if (type === "number") { var n = Number(raw); return raw === "" || isNaN(n) ? raw : n; }
      return raw;
    }
    if (op === "in" || op === "not_in") {
      var list = input("text", (node.value || []).join(", "), function (raw) {
        node.value = raw.split(",").map(function (s) { return s.trim(); }).filter(Boolean).map(parse);
        self.sync();
      }, { placeholder: "a, b, c", size: 30 });
      // The box shows the values kept, without the white space around each, once it is left.
      list.addEventListener("blur", function () { list.value = (node.value || []).join(", "); });
      holder.appendChild(list);
      return;
    }
    if (type === "string" && (op === "eq" || op === "ne")) {
      // 'is' and 'is not' compare text whole, and the server refuses it with white space around it
      // ("pro " matches no "pro"): kept trimmed as typed, and shown trimmed once the box is left.
      // 'contains' and 'starts with' keep their spaces, which may be meant.
      var whole = input("text", node.value, function (raw) { node.value = raw.trim(); self.sync(); });
      whole.addEventListener("blur", function () { whole.value = whole.value.trim(); });
      holder.appendChild(whole);
      return;
    }
    if (op === "between") {
      if (!Array.isArray(node.value) || node.value.length !== 2) node.value = this.defaultValue(type, op);
      [0, 1].forEach(function (i) {
        if (i === 1) holder.appendChild(el("span", { className: "rb-label", text: "and" }));
        self.singleValue(holder, type, node.value[i], function (v) { node.value[i] = v; self.sync(); }, parse);
      });
      return;
    }
    this.singleValue(holder, type, node.value, function (v) { node.value = v; self.sync(); }, parse);
  };

  Builder.prototype.singleValue = function (holder, type, value, set, parse) {
    var self = this;
    if (type === "boolean") {
      holder.appendChild(select([["true", "true"], ["false", "false"]], String(value), function (v) { set(v === "true"); }, "value"));
      return;
    }
    if (type === "date") {
      var relative = value && typeof value === "object";
      var box = el("span");
      var draw = function () {
        box.innerHTML = "";
        box.appendChild(select([["relative", "days/weeks ago"], ["absolute", "on date"]], relative ? "relative" : "absolute", function (mode) {
          relative = mode === "relative";
          value = relative ? { ago: 7, unit: "days" } : new Date().toISOString().slice(0, 10);
          set(value);
          draw();
        }, "date mode"));
        if (relative) {
          box.appendChild(input("number", value.ago, function (raw) { value.ago = parseInt(raw, 10) || 0; set(value); }, { min: 0, className: "rb-small" }));
          box.appendChild(select(self.meta.units, value.unit || "days", function (u) { value.unit = u; set(value); }, "unit"));
          box.appendChild(el("span", { className: "rb-label", text: "ago" }));
        } else {
          box.appendChild(input("date", value || "", function (raw) { value = raw; set(raw); }));
        }
      };
      draw();
      holder.appendChild(box);
      return;
    }
    holder.appendChild(input(type === "number" ? "number" : "text", value, function (raw) { set(parse(raw)); }, type === "number" ? { step: "any" } : {}));
  };

  Builder.prototype.eventInputs = function (row, node, path) {
    var self = this;
    row.appendChild(select([["true", "did"], ["false", "did not do"]], String(node.did !== false), function (v) { node.did = v === "true"; self.sync(); }, "did"));
    row.appendChild(input("text", node.event, function (v) { node.event = v; self.sync(); }, { list: this.uid + "-events", placeholder: "event name" }));
    // "1 time in the last 1 day", "2 times in the last 30 days": the words follow the numbers typed;
    // without days (the box says "ever"), "1 time ever".
    var times = el("span", { className: "rb-label rb-times" });
    var days = el("span", { className: "rb-label rb-days" });
    function words() {
      times.textContent = ((node.min_count || 1) === 1 ? "time" : "times") + (node.within_days ? " in the last" : "");
      days.textContent = !node.within_days ? "" : node.within_days === 1 ? "day" : "days";
    }
    row.appendChild(el("span", { className: "rb-label", text: "at least" }));
    row.appendChild(input("number", node.min_count || 1, function (v) { node.min_count = Math.max(1, parseInt(v, 10) || 1); words(); self.sync(); }, { min: 1, className: "rb-small" }));
    row.appendChild(times);
    row.appendChild(input("number", node.within_days || "", function (v) {
      var within = parseInt(v, 10);
      if (within > 0) node.within_days = within; else delete node.within_days;
      words();
      self.sync();
    }, { min: 1, className: "rb-small", placeholder: "ever" }));
    row.appendChild(days);
    words();
    var where = el("div", { className: "rb-where" });
    (node.where || []).forEach(function (cond, index) {
      var line = el("div", { className: "rb-row", "data-path": path + ".where[" + index + "]" }, [el("span", { className: "rb-label", text: "where" })]);
      self.attributeInputs(line, cond, "property", self.propTypes, self.uid + "-props");
      line.appendChild(el("button", { type: "button", className: "button rb-remove", text: "✕", onclick: function () {
        node.where.splice(index, 1);
        if (!node.where.length) delete node.where;
        self.render();
      } }));
      where.appendChild(line);
    });
    where.appendChild(el("div", {}, [el("button", { type: "button", className: "button", text: "+ where property", onclick: function () {
      node.where = node.where || [];
      node.where.push({ property: "", type: "string", op: "eq", value: "" });
      self.render();
    } })]));
    row.appendChild(where);
  };

  Builder.prototype.segmentInputs = function (row, node) {
    var self = this;
    row.appendChild(select([["true", "is in"], ["false", "is not in"]], String(node.member !== false), function (v) { node.member = v === "true"; self.sync(); }, "membership"));
    var options = (this.meta.segments || []).map(function (s) { return [s.id, s.name]; });
    if (!options.length) options = [["", "(no segment you may use)"]];
    row.appendChild(select(options, node.segment, function (v) { node.segment = parseInt(v, 10); self.sync(); }, "segment"));
  };

  Builder.prototype.reachableInputs = function (row, node) {
    var self = this;
    var spec = node.reachable;
    if (!this.meta.reachability) row.appendChild(el("em", { className: "rb-label", text: "(needs devices: not available yet)" }));
    var apps = (this.meta.apps || []).map(function (a) { return [a.id, a.name]; });
    if (!apps.length) apps = [["", "(no app you may use)"]];
    row.appendChild(select(apps, spec.app, function (v) { spec.app = parseInt(v, 10); self.sync(); }, "app"));
    row.appendChild(select([["", "any platform"], ["ios", "iOS"], ["android", "Android"]], spec.platform || "", function (v) {
      if (v) spec.platform = v; else delete spec.platform;
      self.sync();
    }, "platform"));
    row.appendChild(el("span", { className: "rb-label", text: "with an opted-in device" }));
  };

  /* Outline the nodes at the paths of the server's errors ("rules.all[1].value"): those given, or
     the saved form's, which the page puts in data-errors. The errors of a tree whose top level was
     one condition are at its paths ("rules.value"): they are the condition's of the group of one
     it is shown as ("rules.all[0].value"), as the server's words say ("Condition 1"). */
  Builder.prototype.markErrors = function (paths) {
    var root = this.root;
    var wrapped = this.wrapped;
    root.querySelectorAll(".rb-error").forEach(function (n) { n.classList.remove("rb-error"); });
    if (!paths) {
      try { paths = JSON.parse(root.dataset.errors || "[]"); } catch (e) { paths = []; }
    }
    paths.forEach(function (path) {
      if (wrapped && /^rules[.[]/.test(path) && !/^rules\.(all|any|none)\[/.test(path)) {
        path = "rules.all[0]" + path.slice("rules".length);
      }
      var best = null;
      root.querySelectorAll("[data-path]").forEach(function (node) {
        var p = node.getAttribute("data-path");
        if (path === p || path.indexOf(p + ".") === 0 || path.indexOf(p + "[") === 0) {
          if (!best || p.length > best.getAttribute("data-path").length) best = node;
        }
      });
      if (best) best.classList.add("rb-error");
    });
  };

  function csrfToken() {
    var field = document.querySelector("input[name=csrfmiddlewaretoken]");
    return field ? field.value : "";
  }

  // A profile's attributes as a small table of names and values (not JSON).
  function attributesTable(attributes) {
    if (typeof attributes === "string") return el("code", { text: attributes });
    var rows = Object.keys(attributes || {}).sort().map(function (key) {
      var value = attributes[key];
      return el("tr", {}, [el("th", { text: key }), el("td", { text: typeof value === "object" ? JSON.stringify(value) : String(value) })]);
    });
    return rows.length ? el("table", { className: "rb-attributes" }, rows) : el("span", { text: "—" });
  }

  function preview(builder, box) {
    var summary = box.querySelector(".rule-builder-preview-summary");
    var result = box.querySelector(".rule-builder-preview-result");
    summary.textContent = "Counting…";
    result.innerHTML = "";
    var match = /\/segment\/(\d+)\/change\//.exec(window.location.pathname);
    fetch(builder.root.dataset.previewUrl, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      credentials: "same-origin",
      body: JSON.stringify({ rules: builder.tree, segment: match ? parseInt(match[1], 10) : null }),
    }).then(function (response) { return response.json(); }).then(function (data) {
      if (data.errors) {
        summary.textContent = "The rules need fixing:";
        var list = el("ul", { className: "rb-errors" });
        data.errors.forEach(function (e) { list.appendChild(el("li", { text: (e.place || e.path) + ": " + e.message })); });
        result.appendChild(list);
        builder.markErrors(data.errors.map(function (e) { return e.path; }));
        return;
      }
      builder.markErrors([]);
      summary.textContent = data.count.toLocaleString() + (data.count === 1 ? " profile" : " profiles") + " · counted in " + data.took_ms + " ms";
      (data.reach || []).forEach(function (r) {
        result.appendChild(el("p", { className: "rb-reach", text: r.app + ": " + r.text }));
      });
      // Values the rules read as nothing ("042" under a number rule, "pro " under 'is'), counted among the newest profiles.
      (data.unread || []).forEach(function (text) {
        result.appendChild(el("p", { className: "rb-unread", text: "⚠ " + text }));
      });
      if (!data.sample.length) return;
      var table = el("table", {}, [el("thead", {}, [el("tr", {}, [el("th", { text: "external id" }), el("th", { text: "locale" }), el("th", { text: "attributes" })])])]);
      var body = el("tbody");
      data.sample.forEach(function (p) {
        body.appendChild(el("tr", {}, [
          el("td", {}, [el("a", { href: p.url, text: p.external_id })]),
          el("td", { text: p.locale }),
          el("td", {}, [attributesTable(p.attributes)]),
        ]));
      });
      table.appendChild(body);
      result.appendChild(el("p", { className: "rb-label", text: "A sample of " + data.sample.length + ":" }));
      result.appendChild(table);
    }).catch(function () { summary.textContent = "The preview failed; try again."; });
  }

  function start() {
    var kind = document.getElementById("id_kind");
    var rulesSet = document.querySelector("fieldset.rules-fieldset");
    if (kind && rulesSet) {
      var toggle = function () { rulesSet.style.display = kind.value === "rules" ? "" : "none"; };
      kind.addEventListener("change", toggle);
      toggle();
    }
    document.querySelectorAll(".rule-builder").forEach(function (root) {
      if (root.dataset.ready) return;
      root.dataset.ready = "1";
      var builder = new Builder(root);
      var box = root.parentNode.querySelector('.rule-builder-preview[data-for="' + root.dataset.input + '"]');
      if (box) box.querySelector(".rule-builder-preview-button").addEventListener("click", function () { preview(builder, box); });
    });
  }

  // Other editors (a journey condition's "matches rule" branch) draw the same builder:
  // mount(root, input, meta, onchange) where root is an empty element and input holds the JSON.
  window.PushdeskRuleBuilder = {
    mount: function (root, input, meta, onchange) {
      root.classList.add("rule-builder");
      root.dataset.input = input.id;
      root.dataset.meta = JSON.stringify(meta || {});
      root.dataset.ready = "1";
      root.boundInput = input;  // the input may not be in the document yet
      var builder = new Builder(root);
      builder.onchange = onchange;
      return builder;
    },
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
