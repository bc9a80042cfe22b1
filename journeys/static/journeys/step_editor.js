/* The journey step editor: one row per step, written back to the JSON field on every change.
   The server validates the result; its errors name the step, and its faults (data-faults: a step
   id and a field, as journeys.graph.GraphInvalid names them) say which input to mark. */
(function () {
  "use strict";
  const TYPES = ["wait", "condition", "split", "push", "exit"];
  // A condition branch's label as the editor gives it, by what the branch tests: it follows the kind
  // chosen until the marketer types their own.
  const BRANCH_LABELS = { segment: "In segment", rules: "Matches rule", event: "Did event" };

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => {
      if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    });
    (children || []).forEach((c) => node.appendChild(typeof c === "string" ? document.createTextNode(c) : c));
    return node;
  }

  function select(options, value, onchange, attrs) {
    const s = el("select", Object.assign({ onchange: (e) => onchange(e.target.value) }, attrs || {}));
    options.forEach(([v, label]) => {
      const o = el("option", { value: String(v), text: label });
      if (String(v) === String(value)) o.selected = true;
      s.appendChild(o);
    });
    return s;
  }

  function input(type, value, onchange, attrs) {
    return el("input", Object.assign({ type: type, value: value === undefined || value === null ? "" : value,
      onchange: (e) => onchange(e.target.value) }, attrs || {}));
  }

  function init(root) {
    const textarea = document.getElementById(root.dataset.input);
    const meta = JSON.parse(root.dataset.meta || "{}");
    let graph;
    try { graph = JSON.parse(textarea.value || "{}"); } catch (e) { graph = {}; }
    if (!Array.isArray(graph.steps)) graph.steps = [];

    function save() { textarea.value = JSON.stringify(graph, null, 2); }
    function ids() { return graph.steps.map((s) => s.id); }
    function nextSelect(step, key, holder, field) {
      const target = holder || step;
      return select([["", "— choose —"]].concat(ids().filter((i) => i !== step.id).map((i) => [i, i])), target[key] || "",
        (v) => { target[key] = v; save(); }, { "class": "next-select", "data-key": key, "data-field": field || key });
    }

    // The admin draws every input of a field with errors in red (here the whole graph): only the
    // inputs the server's faults name are marked, each until it is changed; a fault about a step
    // as a whole (a loop, a step no one reaches) marks its row.
    let faults;
    try { faults = JSON.parse(root.dataset.faults || "[]"); } catch (e) { faults = []; }
    function markFaults() {
      faults.forEach((fault) => {
        const row = root.querySelector('.step-row[data-step="' + CSS.escape(String(fault.step)) + '"]');
        if (!row) return;
        const fields = [...row.querySelectorAll("[data-field]")].filter((node) => fault.field && node.dataset.field === fault.field);
        if (!fields.length) { row.classList.add("step-fault-row"); return; }
        fields.forEach((node) => {
          node.classList.add("step-fault");
          node.setAttribute("aria-invalid", "true");
          const clear = () => { faults = faults.filter((f) => f !== fault); render(); };
          node.addEventListener("change", clear, { once: true });
        });
      });
    }

    function fresh(type, id) {
      const step = { id: id, type: type };
      if (type === "wait") Object.assign(step, { seconds: 0, next: "" });
      if (type === "condition") Object.assign(step, { branches: [{ label: BRANCH_LABELS.segment, segment: (meta.segments[0] || {}).id, next: "" }], else: "" });
      if (type === "split") Object.assign(step, { branches: [{ label: "A", percent: 50, next: "" }, { label: "B", percent: 50, next: "" }] });
      if (type === "push") Object.assign(step, { content: (meta.contents[0] || {}).id, next: "" });
      return step;
    }

    function branchRow(step, branch, index) {
      const row = el("div", { "class": "branch" });
      const field = "branches." + index + ".";
      row.appendChild(input("text", branch.label, (v) => { branch.label = v; save(); }, { placeholder: "label", "class": "branch-label", "data-field": field + "label" }));
      if (step.type === "split") {
        row.appendChild(input("number", branch.percent, (v) => { branch.percent = parseInt(v, 10); save(); }, { min: 0, max: 100, "class": "branch-percent", "data-field": field + "percent" }));
        row.appendChild(document.createTextNode("%"));
      } else {
        const kind = "segment" in branch ? "segment" : ("rules" in branch ? "rules" : "event");
        row.appendChild(select([["segment", "in segment"], ["rules", "matches rule"], ["event", "did event since entering"]], kind, (v) => {
          if (!branch.label || branch.label === BRANCH_LABELS[kind]) branch.label = BRANCH_LABELS[v];
          delete branch.segment; delete branch.rules; delete branch.event;
          branch[v] = v === "segment" ? (meta.segments[0] || {}).id : (v === "rules" ? { all: [] } : "");
          save(); render();
        }, { "class": "branch-kind", "data-field": "branches." + index }));
        if (kind === "segment") {
          row.appendChild(select(meta.segments.map((s) => [s.id, s.name]), branch.segment, (v) => { branch.segment = parseInt(v, 10); save(); }, { "class": "branch-segment", "data-field": field + "segment" }));
        } else if (kind === "rules") {
          // The audiences rule builder, reused; the JSON stays one click away.
          const id = "branch-rules-" + step.id + "-" + index;
          const json = el("textarea", { id: id, "class": "rules-json", rows: 3, cols: 60, "data-field": field + "rules" });
          json.value = JSON.stringify(branch.rules);
          json.addEventListener("change", () => { try { branch.rules = JSON.parse(json.value); save(); render(); } catch (e) { /* the server names the error */ } });
          const holder = el("div", { "class": "branch-rule-builder", "data-field": field + "rules" });
          row.appendChild(holder);
          row.appendChild(el("details", { "class": "branch-rules-json" }, [el("summary", { text: "Edit as JSON" }), json]));
          if (window.PushdeskRuleBuilder && meta.rules) {
            window.PushdeskRuleBuilder.mount(holder, json, meta.rules, (tree) => { branch.rules = tree; save(); });
          }
        } else {
          row.appendChild(input("text", branch.event, (v) => { branch.event = v; save(); }, { placeholder: "event name", "class": "branch-event", "data-field": field + "event" }));
        }
      }
      row.appendChild(document.createTextNode("→"));
      row.appendChild(nextSelect(step, "next", branch, field + "next"));
      row.appendChild(el("button", { type: "button", "class": "button remove-branch", text: "×", onclick: () => { step.branches.splice(index, 1); save(); render(); } }));
      return row;
    }

    function stepRow(step, index) {
      const row = el("div", { "class": "step-row step-type-" + step.type, "data-step": step.id, id: "step-" + step.id });
      const header = el("header", {}, [
        el("strong", { text: "#" + (index + 1) }),
        input("text", step.id, (v) => {
          const old = step.id; step.id = v;
          faults.forEach((f) => { if (f.step === old) f.step = v; });
          graph.steps.forEach((s) => { ["next", "else"].forEach((k) => { if (s[k] === old) s[k] = v; }); (s.branches || []).forEach((b) => { if (b.next === old) b.next = v; }); });
          save(); render();
        }, { "class": "step-id", title: "step id", "data-field": "id" }),
        select(TYPES.map((t) => [t, t]), step.type, (v) => { graph.steps[index] = fresh(v, step.id); save(); render(); }, { "class": "step-type", "data-field": "type" }),
        el("button", { type: "button", "class": "button remove-step", text: "Remove", onclick: () => { graph.steps.splice(index, 1); save(); render(); } }),
      ]);
      row.appendChild(header);
      const body = el("div", { "class": "step-body" });
      if (step.type === "wait") {
        const mode = "until" in step ? "until" : "seconds";
        // A profile without a zone waits in the app's default one (journeys.services.engine).
        const zone = meta.wait_zone || "the app's default zone";
        body.appendChild(select([["seconds", "for"], ["until", "until time of day (profile's zone, else " + zone + ")"]], mode, (v) => {
          delete step.seconds; delete step.until; if (v === "until") step.until = "09:00"; else step.seconds = 0; save(); render();
        }, { "class": "wait-mode" }));
        if (mode === "seconds") {
          // A duration (stored in seconds) in the largest unit that divides it, minutes for none;
          // the units are the server's (journeys.diagram.WAIT_UNITS), offered minutes first.
          const units = meta.wait_units;
          const seconds = step.seconds || 0;
          const largest = units.map(([size]) => size).sort((a, b) => parseInt(b, 10) - parseInt(a, 10));
          let unit = seconds ? largest.find((size) => seconds % parseInt(size, 10) === 0) : "60";
          const amount = input("number", seconds / parseInt(unit, 10), (v) => {
            step.seconds = Math.max(0, parseInt(v, 10) || 0) * parseInt(unit, 10); save();
          }, { "class": "wait-amount", min: 0, "data-field": "seconds" });
          body.appendChild(amount);
          body.appendChild(select(units.map(([size, label]) => [size, label]), unit, (v) => {
            unit = v; step.seconds = Math.max(0, parseInt(amount.value, 10) || 0) * parseInt(unit, 10); save();
          }, { "class": "wait-unit" }));
        }
        else body.appendChild(input("text", step.until, (v) => { step.until = v; save(); }, { placeholder: "HH:MM", "class": "wait-until", "data-field": "until" }));
        body.appendChild(document.createTextNode(" then → "));
        body.appendChild(nextSelect(step, "next"));
      } else if (step.type === "push") {
        // "— choose —" while the step has no content: the first one would look chosen, and was not.
        body.appendChild(select([["", "— choose —"]].concat(meta.contents.map((c) => [c.id, c.name])), step.content === null || step.content === undefined ? "" : step.content,
          (v) => { step.content = v ? parseInt(v, 10) : null; save(); }, { "class": "push-content", "data-field": "content" }));
        body.appendChild(document.createTextNode(" then → "));
        body.appendChild(nextSelect(step, "next"));
      } else if (step.type === "condition" || step.type === "split") {
        // The branches together, with their Add button: what a fault about them all marks (too few, a
        // split's percentages not summing to 100).
        const branches = el("div", { "class": "branches", "data-field": "branches" });
        (step.branches || []).forEach((b, i) => branches.appendChild(branchRow(step, b, i)));
        branches.appendChild(el("button", { type: "button", "class": "button add-branch", text: "Add branch", onclick: () => {
          step.branches.push(step.type === "split" ? { label: "", percent: 0, next: "" } : { label: "", segment: (meta.segments[0] || {}).id, next: "" }); save(); render();
        } }));
        body.appendChild(branches);
        if (step.type === "condition") {
          body.appendChild(el("div", { "class": "branch" }, [document.createTextNode("All others →"), nextSelect(step, "else")]));
        }
      } else {
        body.appendChild(document.createTextNode("The journey ends here."));
      }
      row.appendChild(body);
      return row;
    }

    function render() {
      root.innerHTML = "";
      graph.steps.forEach((s, i) => root.appendChild(stepRow(s, i)));
      const add = el("div", { "class": "add-step" }, [document.createTextNode("Add a step: ")]);
      TYPES.forEach((t) => add.appendChild(el("button", { type: "button", "class": "button add-" + t, text: t, onclick: () => {
        let n = graph.steps.length + 1; while (ids().includes(t + n)) n += 1;
        // Before an end step that comes last (a new journey's "end"), so the list reads in the order
        // the journey runs: steps lead to each other by id, their order is the list's alone.
        const last = graph.steps[graph.steps.length - 1];
        graph.steps.splice(last && last.type === "exit" ? graph.steps.length - 1 : graph.steps.length, 0, fresh(t, t + n));
        save(); render();
      } })));
      root.appendChild(add);
      markFaults();
    }

    textarea.addEventListener("change", () => { try { graph = JSON.parse(textarea.value); render(); } catch (e) { /* the server says what is wrong */ } });
    save();
    render();
  }

  document.addEventListener("DOMContentLoaded", () => document.querySelectorAll(".step-editor").forEach(init));
})();
