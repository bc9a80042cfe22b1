// The home page's chart of the last 24 hours of sends (Chart.js, served from our static files).
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("pd-sends-data").textContent);
  const canvas = document.getElementById("pd-sends-chart");
  if (!canvas || !window.Chart) return;
  const style = getComputedStyle(document.documentElement);
  const css = (name, fallback) => (style.getPropertyValue(name) || fallback).trim();
  const fg = css("--body-fg", "#333");
  const grid = css("--hairline-color", "#e8e8e8");
  const colours = {
    targeted: "#6b7280",
    accepted: "#16a34a",
    failed: "#dc2626",
    unknown: "#7c3aed",
    skipped: "#d97706",
    opened: "#2563eb",
  };
  const names = ["targeted", "accepted", "failed", "unknown", "skipped", "opened"];
  const chart = new window.Chart(canvas, {
    type: "line",
    data: {
      labels: data.labels,
      datasets: names.map((name) => ({
        label: name,
        data: data.series[name],
        borderColor: colours[name],
        backgroundColor: colours[name],
        tension: 0.2,
        pointRadius: 2,
      })),
    },
    options: {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      interaction: { mode: "index", intersect: false },
      plugins: { legend: { labels: { color: fg } } },
      scales: {
        x: { title: { display: true, text: "hour (" + data.start + " – " + data.end + ")", color: fg }, ticks: { color: fg }, grid: { color: grid } },
        y: { beginAtZero: true, title: { display: true, text: "pushes", color: fg }, ticks: { color: fg, precision: 0 }, grid: { color: grid } },
      },
    },
  });
  canvas.chart = chart;
})();
