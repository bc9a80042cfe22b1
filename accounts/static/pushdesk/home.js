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

  // The hours as this browser's zone reads them, the zone named: a marketer in New York reads a
  // send of 21:30 at 21:00, not at 02:00 the next day (the server's UTC). Where the browser names
  // no zone, the server's labels and zone stand.
  let zone = data.zone;
  let labels = data.labels;
  let start = data.start;
  let end = data.end;
  let zoneNote = data.zone;
  let titles = data.labels.map((label) => label + " (" + data.zone + ")");
  try {
    const browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (browserZone) {
      const parts = (iso, options) => {
        const out = {};
        new Intl.DateTimeFormat("en-GB", Object.assign({ timeZone: browserZone, hourCycle: "h23" }, options))
          .formatToParts(new Date(iso)).forEach((p) => { out[p.type] = p.value; });
        return out;
      };
      const clock = (iso) => { const p = parts(iso, { hour: "2-digit", minute: "2-digit" }); return p.hour + ":" + p.minute; };
      const day = (iso) => { const p = parts(iso, { weekday: "short", day: "numeric", month: "short" }); return p.weekday + " " + p.day + " " + p.month; };
      const date = (iso) => { const p = parts(iso, { year: "numeric", month: "2-digit", day: "2-digit" }); return p.year + "-" + p.month + "-" + p.day; };
      // The first hour, and each that starts another day, name their day too: no "tomorrow" by surprise.
      labels = data.hours.map((iso, i) => (i === 0 || date(iso) !== date(data.hours[i - 1]) ? [clock(iso), day(iso)] : clock(iso)));
      titles = data.hours.map((iso) => day(iso) + ", " + clock(iso) + " (" + browserZone + ")");
      start = date(data.hours[0]) + " " + clock(data.hours[0]);
      end = "now, " + clock(data.now);
      zone = browserZone;
      zoneNote = browserZone + ", your browser's time zone";
      const heading = document.getElementById("pd-sends-window");
      if (heading) heading.textContent = "(" + start + " – " + end + "; times in " + zoneNote + ")";
      canvas.setAttribute("aria-label", "Sends per hour over the 24 full hours before this one and this one, hours in " + browserZone);
    }
  } catch (e) { /* a browser without Intl's zones: the server's UTC labels, named */ }

  const chart = new window.Chart(canvas, {
    type: "line",
    data: {
      labels: labels,
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
      plugins: {
        legend: { labels: { color: fg } },
        tooltip: { callbacks: { title: (items) => (items.length ? titles[items[0].dataIndex] : "") } },
      },
      scales: {
        x: { title: { display: true, text: "hour in " + zone + " (" + start + " – " + end + ")", color: fg }, ticks: { color: fg }, grid: { color: grid } },
        y: { beginAtZero: true, title: { display: true, text: "pushes", color: fg }, ticks: { color: fg, precision: 0 }, grid: { color: grid } },
      },
    },
  });
  canvas.chart = chart;
})();
