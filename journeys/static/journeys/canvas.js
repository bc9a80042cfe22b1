/* The journey canvas: the server's SVG laid out again by dagre (left to right, labels on the
   branch edges, nothing overlapping), then panned by dragging and zoomed with the buttons. */
(function () {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";

  function layout(svg) {
    if (!window.dagre || svg.dataset.laidOut) return;
    const [boxW, boxH] = svg.dataset.box.split(" ").map(Number);
    const graph = new window.dagre.graphlib.Graph({ multigraph: true });
    graph.setGraph({ rankdir: "LR", nodesep: 24, ranksep: 70, edgesep: 16, marginx: 12, marginy: 12 });
    const nodes = [...svg.querySelectorAll("g.step")];
    nodes.forEach((node) => graph.setNode(node.dataset.step, { width: boxW, height: boxH }));
    const edges = [...svg.querySelectorAll("g.edge")];
    edges.forEach((edge, i) => {
      const text = edge.querySelector(".edge-label");
      const label = text ? text.textContent : "";
      graph.setEdge(edge.dataset.from, edge.dataset.to,
        { width: label ? label.length * 6.5 + 8 : 0, height: label ? 14 : 0, labelpos: "c" }, "e" + i);
    });
    window.dagre.layout(graph);
    nodes.forEach((node) => {
      const placed = graph.node(node.dataset.step);
      node.setAttribute("transform", "translate(" + (placed.x - boxW / 2) + "," + (placed.y - boxH / 2) + ")");
    });
    edges.forEach((edge, i) => {
      const placed = graph.edge(edge.dataset.from, edge.dataset.to, "e" + i);
      const points = placed.points;
      let d = "M" + points[0].x + "," + points[0].y;
      for (let p = 1; p < points.length; p += 1) d += " L" + points[p].x + "," + points[p].y;
      edge.querySelector("path").setAttribute("d", d);
      const text = edge.querySelector(".edge-label");
      if (text) {
        text.setAttribute("x", placed.x);
        text.setAttribute("y", placed.y + 4);
        text.setAttribute("text-anchor", "middle");
      }
    });
    const size = graph.graph();
    svg.setAttribute("viewBox", "0 0 " + size.width + " " + size.height);
    svg.dataset.width = size.width;
    svg.dataset.height = size.height;
    svg.dataset.laidOut = "dagre";
  }

  function zoom(canvas, svg, scale) {
    const width = Number(svg.dataset.width || svg.getAttribute("width"));
    const height = Number(svg.dataset.height || svg.getAttribute("height"));
    canvas.dataset.scale = scale;
    svg.setAttribute("width", Math.round(width * scale));
    svg.setAttribute("height", Math.round(height * scale));
    canvas.querySelector(".journey-canvas-scale").textContent = Math.round(scale * 100) + "%";
  }

  function init(canvas) {
    const svg = canvas.querySelector("svg.journey-graph");
    const view = canvas.querySelector(".journey-canvas-view");
    if (!svg || canvas.dataset.ready) return;
    canvas.dataset.ready = "1";
    layout(svg);
    // The view scrolls within the room its fieldset has (the admin's modules clip what overflows).
    const room = () => {
      view.style.width = "240px"; // first let the page take its own width, then fill it
      let right = document.documentElement.clientWidth;
      for (let frame = canvas.parentElement; frame && frame !== document.body; frame = frame.parentElement) {
        if (getComputedStyle(frame).overflowX !== "visible") right = Math.min(right, frame.getBoundingClientRect().right);
      }
      view.style.width = Math.max(240, right - view.getBoundingClientRect().left - 24) + "px";
    };
    room();
    window.addEventListener("resize", room);
    window.addEventListener("load", room); // the admin's sidebar moves the page once loaded
    zoom(canvas, svg, 1);
    canvas.querySelectorAll("[data-zoom]").forEach((button) => button.addEventListener("click", () => {
      const now = Number(canvas.dataset.scale);
      const width = Number(svg.dataset.width || svg.getAttribute("width"));
      const next = { in: now * 1.25, out: now / 1.25, fit: (view.clientWidth - 4) / width }[button.dataset.zoom];
      zoom(canvas, svg, Math.min(3, Math.max(0.2, next)));
    }));
    // Drag to pan (a click on a step still follows its link).
    let drag = null;
    view.addEventListener("pointerdown", (e) => {
      if (e.target.closest("a")) return;
      drag = { x: e.clientX, y: e.clientY, left: view.scrollLeft, top: view.scrollTop };
      view.style.cursor = "grabbing";
    });
    window.addEventListener("pointermove", (e) => {
      if (!drag) return;
      view.scrollLeft = drag.left - (e.clientX - drag.x);
      view.scrollTop = drag.top - (e.clientY - drag.y);
    });
    window.addEventListener("pointerup", () => { drag = null; view.style.cursor = "grab"; });
  }

  document.querySelectorAll(".journey-canvas").forEach(init);
  document.addEventListener("DOMContentLoaded", () => document.querySelectorAll(".journey-canvas").forEach(init));
})();
