// The report charts of a campaign, a dispatch or a journey (Chart.js, served from our static files),
// drawn from the figures in the page's JSON script tag "pd-report-data". Each chart is reachable
// from its canvas as `canvas.chart`.
(function () {
  "use strict";
  const source = document.getElementById("pd-report-data");
  if (!source || !window.Chart) return;
  const data = JSON.parse(source.textContent);
  const style = getComputedStyle(document.documentElement);
  const css = (name, fallback) => (style.getPropertyValue(name) || fallback).trim();
  const fg = css("--body-fg", "#333");
  const grid = css("--hairline-color", "#e8e8e8");
  const colours = {
    targeted: "#6b7280",
    "opted in": "#7c3aed",
    accepted: "#16a34a",
    failed: "#dc2626",
    skipped: "#d97706",
    opened: "#2563eb",
    entered: "#0891b2",
    waiting: "#a3a3a3",
    sent: "#6b7280",
    exited: "#525252",
  };
  const axis = (title, extra) => Object.assign({
    title: { display: true, text: title, color: fg }, ticks: { color: fg }, grid: { color: grid },
  }, extra || {});
  const count = (title) => axis(title, { beginAtZero: true, ticks: { color: fg, precision: 0 } });
  const options = (x, y, extra) => Object.assign({
    responsive: true,
    maintainAspectRatio: false,
    animation: false,
    interaction: { mode: "index", intersect: false },
    plugins: { legend: { labels: { color: fg } } },
    scales: { x: x, y: y },
  }, extra || {});

  function draw(id, config) {
    const canvas = document.getElementById(id);
    if (canvas) canvas.chart = new window.Chart(canvas, config);
  }

  function bars(names, series) {
    return names.map((name) => ({ label: name, data: series[name], backgroundColor: colours[name], borderColor: colours[name] }));
  }

  const timeline = data.timeline;
  draw("pd-chart-timeline", {
    type: "line",
    data: {
      labels: timeline.labels,
      datasets: ["accepted", "opened"].map((name) => ({
        label: name, data: timeline[name], borderColor: colours[name], backgroundColor: colours[name], tension: 0, pointRadius: 2,
      })),
    },
    // Each tooltip names the zone of its hour or day (the campaign's, a journey's UTC), as the axis
    // and the table do: a bare "11:00" under the pointer reads as the browser's own hour.
    options: options(axis(timeline.unit + " (" + data.time_zone + ")"), count("pushes"), {
      plugins: {
        legend: { labels: { color: fg } },
        tooltip: { callbacks: { title: (items) => (items.length ? timeline.labels[items[0].dataIndex] + " (" + data.time_zone + ")" : "") } },
      },
    }),
  });
  draw("pd-chart-funnel", {
    type: "bar",
    data: {
      labels: data.funnel.labels,
      datasets: [{ label: "pushes", data: data.funnel.values, backgroundColor: data.funnel.labels.map((l) => colours[l]) }],
    },
    options: options(count("pushes"), axis("stage"), { indexAxis: "y", plugins: { legend: { display: false } } }),
  });
  draw("pd-chart-platforms", {
    type: "bar",
    data: { labels: data.platforms.labels, datasets: bars(["targeted", "accepted", "failed", "skipped", "opened"], data.platforms.series) },
    options: options(axis("platform"), count("pushes")),
  });
  // A long label on lines of at most `width` characters (broken between words): the y axis of a
  // horizontal bar chart takes at most about half the chart's width, and cuts off what is wider.
  function lines(text, width) {
    const out = [];
    for (const word of text.split(" ")) {
      const last = out.length - 1;
      if (last >= 0 && out[last].length + 1 + word.length <= width) out[last] += " " + word;
      else out.push(word);
    }
    return out.length > 1 ? out : text;
  }

  if (data.reasons.length) {
    const reasons = data.reasons.map((r) => lines(r.bar, 24));
    // Every reason named (none skipped for want of room): the chart grows with its lines.
    const canvas = document.getElementById("pd-chart-reasons");
    const rows = reasons.reduce((n, label) => n + [].concat(label).length, 0) + reasons.length;
    if (canvas) canvas.parentElement.style.height = Math.max(240, 60 + rows * 15) + "px";
    draw("pd-chart-reasons", {
      type: "bar",
      data: {
        labels: reasons,
        datasets: [{ label: "pushes", data: data.reasons.map((r) => r.count), backgroundColor: data.reasons.map((r) => colours[r.outcome]) }],
      },
      options: options(count("pushes"), axis("outcome: reason", { ticks: { color: fg, autoSkip: false } }), {
        indexAxis: "y", plugins: { legend: { display: false } },
      }),
    });
  }
  if (data.steps) {
    draw("pd-chart-steps", {
      type: "bar",
      data: { labels: data.steps.labels, datasets: bars(Object.keys(data.steps.series), data.steps.series) },
      options: options(axis("step"), count("profiles / pushes")),
    });
  }
})();
