// kilomatch review page: the cluster table, one cluster's view, and the reviewer's decisions.
// Everything comes from the JSON embedded in the page; nothing is fetched, so the page works
// from file:// and offline. Decisions are kept in localStorage until downloaded.
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("kilomatch-data").textContent);
  const CLUSTERS = DATA.clusters;
  const BY_ID = new Map(CLUSTERS.map((c) => [c.id, c]));
  const STORE = "kilomatch-review:" + DATA.folder;
  const LINK = DATA.link;
  let decisions = load();
  let sortKey = "weakest", sortDir = 1, picked = null, order = [];

  const COLUMNS = [
    { key: "id", title: "Cluster", value: (c) => c.id },
    { key: "sessions", title: "Sessions", value: (c) => (c.last - c.first) * 1e4 + c.first,
      tip: "first and last session in which the neuron is seen",
      show: (c) => `${c.first}\u2013${c.last}` },
    { key: "units", title: "Units", value: (c) => c.units.length,
      tip: "units in the cluster: one per session in which the neuron is seen (two when the sorter split it that day)" },
    { key: "depth", title: "Depth (\u00b5m)", value: (c) => c.depth, show: (c) => c.depth.toFixed(0) },
    { key: "amplitude", title: "Amp. (\u00b5V)", tip: "mean amplitude of its units", value: (c) => c.amplitude,
      show: (c) => c.amplitude.toFixed(0) },
    { key: "weakest", title: "Weakest link", value: (c) => c.weakest,
      tip: `lowest ${LINK.label} between two units of the cluster`,
      show: (c) => c.weakest === null ? "\u2013" :
        `<span class="${c.flags.includes("near") ? "weak" : ""}">${fmt(c.weakest)}</span>` },
    { key: "competitor", title: "Competitor", text: true,
      value: (c) => c.competitor ? c.competitor.value : null,
      tip: `nearest competitor: the strongest ${LINK.label} from one of its units to a unit outside it`,
      show: (c) => competitorText(c.competitor) },
    { key: "flags", title: "Flags", text: true, value: (c) => c.flags.length,
      show: (c) => c.flags.map((f) => `<span class="flag" title="${DATA.flags[f]}">${f}</span>`).join("") },
    { key: "decision", title: "Decision", text: true,
      value: (c) => decisions[c.id] ? decisions[c.id].action : null,
      show: (c) => decisions[c.id] ? decisionText(decisions[c.id]) : "" },
  ];

  function fmt(v) { return v.toFixed(2); }
  function esc(s) {
    return String(s).replace(/[&<>"]/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[ch]);
  }
  function competitorText(k) {
    if (!k) return "\u2013";
    const who = k.cluster === null ? `unit ${k.unit}` : `cluster ${k.cluster}`;
    return `${fmt(k.value)} <span class="muted">${who}</span>`;
  }
  function decisionText(d) {
    let extra = "";
    if (d.action === "split") extra = ` ${d.units.length} unit${d.units.length > 1 ? "s" : ""}`;
    if (d.action === "merge") extra = ` with ${d.with}`;
    return `<span class="decision ${d.action}">${d.action}</span>${extra}`;
  }

  function load() {
    try { return JSON.parse(localStorage.getItem(STORE)) || {}; } catch (e) { return {}; }
  }
  function save() {
    try { localStorage.setItem(STORE, JSON.stringify(decisions)); } catch (e) { /* file:// may forbid it */ }
    const n = Object.keys(decisions).length;
    document.getElementById("decision-count").textContent =
      n ? `${n} decision${n > 1 ? "s" : ""} (not yet applied)` : "no decisions yet";
  }

  // ---------------------------------------------------------------- summary and figures
  function header() {
    const dl = document.getElementById("summary");
    for (const [name, value] of DATA.summary) {
      const div = document.createElement("div");
      div.innerHTML = `<dt>${esc(name)}</dt><dd>${esc(value)}</dd>`;
      dl.appendChild(div);
    }
    const box = document.getElementById("figures");
    for (const f of DATA.figures) {
      const fig = document.createElement("figure");
      fig.innerHTML = `<img loading="lazy" src="${esc(f.src)}" alt="${esc(f.title)}"><figcaption>${esc(f.title)}</figcaption>`;
      box.appendChild(fig);
    }
  }

  // ---------------------------------------------------------------- table
  function columnHeads() {
    const tr = document.getElementById("columns");
    for (const col of COLUMNS) {
      const th = document.createElement("th");
      th.textContent = col.title;
      th.dataset.key = col.key;
      if (col.text) th.className = "text";
      if (col.tip) th.title = col.tip;
      th.addEventListener("click", () => {
        sortDir = sortKey === col.key ? -sortDir : 1;
        sortKey = col.key;
        renderTable();
      });
      tr.appendChild(th);
    }
  }

  function sorted() {
    const col = COLUMNS.find((c) => c.key === sortKey);
    const onlyFlagged = document.getElementById("only-flagged").checked;
    const onlyUndecided = document.getElementById("only-undecided").checked;
    const rows = CLUSTERS.filter((c) => (!onlyFlagged || c.flags.length) &&
                                        (!onlyUndecided || !decisions[c.id]));
    return rows.sort((a, b) => {
      const va = col.value(a), vb = col.value(b);
      if (va === vb) return a.id - b.id;
      if (va === null) return 1;  // no value: last, whichever the direction
      if (vb === null) return -1;
      return (va < vb ? -1 : 1) * sortDir;
    });
  }

  function cells(c) {
    return COLUMNS.map((col) =>
      `<td class="${col.text ? "text" : ""}">${col.show ? col.show(c) : esc(col.value(c))}</td>`).join("");
  }
  function renderRow(tr, c) { tr.innerHTML = cells(c); }

  function renderTable() {
    order = sorted();
    for (const th of document.querySelectorAll("#columns th")) {
      th.removeAttribute("aria-sort");
      if (th.dataset.key === sortKey) th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
    }
    // one string parsed once: thousands of rows appear at once
    document.querySelector("#clusters tbody").innerHTML = order.map((c) =>
      `<tr data-id="${c.id}"${c.id === picked ? ' class="picked"' : ""}>${cells(c)}</tr>`).join("");
    document.getElementById("shown").textContent = `${order.length} of ${CLUSTERS.length} clusters`;
  }

  function refreshRow(id) {
    const tr = document.querySelector(`#clusters tbody tr[data-id="${id}"]`);
    if (tr) renderRow(tr, BY_ID.get(id));
  }

  // ---------------------------------------------------------------- one cluster
  function show(id) {
    const c = BY_ID.get(id);
    if (!c) return;
    picked = id;
    for (const tr of document.querySelectorAll("#clusters tbody tr.picked")) tr.classList.remove("picked");
    const tr = document.querySelector(`#clusters tbody tr[data-id="${id}"]`);
    if (tr) { tr.classList.add("picked"); scrollToRow(tr); }
    const d = decisions[id] || {};
    const k = c.competitor;
    const competitor = !k ? "none" : k.cluster === null ? `unit ${k.unit} (unmatched), ${fmt(k.value)}`
      : `<a class="jump" data-id="${k.cluster}">cluster ${k.cluster}</a> (via unit ${k.unit}), ${fmt(k.value)}`;
    const flags = c.flags.length ? c.flags.map((f) => `<span class="flag">${f}</span> ${esc(DATA.flags[f])}`).join("<br>") : "none";
    const cutFrom = (c.cut || []).map((x) => (x.cluster === null ? `unit ${x.unit} (unmatched)`
      : `<a class="jump" data-id="${x.cluster}">cluster ${x.cluster}</a>`) +
      ` (mean match probability ${fmt(x.probability)} over ${x.pairs} pair${x.pairs > 1 ? "s" : ""}, ${esc(x.reason)})`).join("; ");
    const g = c.groups;
    const sessionOf = new Map(c.units.map(([u, s]) => [u, s]));
    const groups = g ? g.units.map((u) => `${u} (session ${sessionOf.get(u)})`).join(", ") +
      ` against the rest: mean match probability ${fmt(g.probability)} over ${g.pairs}` +
      ` compared pair${g.pairs > 1 ? "s" : ""}${g.uncompared ? `, ${g.uncompared} never compared` : ""}` +
      ` <button id="btn-tick" type="button" class="quiet">tick them</button>` : "";
    const rated = c.units.some((x) => x[4] !== null && x[4] !== undefined);
    const units = c.units.map(([u, s, depth, amp, rate]) => {
      const checked = d.action === "split" && d.units.includes(u) ? "checked" : "";
      return `<tr><td><input type="checkbox" class="split-unit" value="${u}" ${checked}></td>` +
        `<td>${u}</td><td>${s}</td><td>${depth.toFixed(1)}</td><td>${amp.toFixed(0)}</td>` +
        (rated ? `<td>${rate === null || rate === undefined ? "\u2013" : rate.toFixed(1)}</td>` : "") + "</tr>";
    }).join("");
    document.getElementById("view").innerHTML = `
      <h2>Cluster ${c.id}</h2>
      <p class="facts"><b>${c.units.length}</b> units in sessions <b>${c.first}\u2013${c.last}</b>,
        corrected depth <b>${c.depth.toFixed(0)} \u00b5m</b>, largest move <b>${c.jump.toFixed(1)} \u00b5m</b>;
        weakest link <b>${c.weakest === null ? "\u2013" : fmt(c.weakest)}</b> (${esc(LINK.label)};
        threshold ${fmt(LINK.threshold)}, ${esc(LINK.threshold_label)})<br>
        nearest competitor: ${competitor}<br>flags: ${flags}${cutFrom ? `<br>cut from: ${cutFrom}` : ""}${groups ? `<br>two groups: units ${groups}` : ""}</p>
      <div class="actions">
        <button id="btn-accept" type="button">Accept</button>
        <button id="btn-reject" type="button" title="its units become unmatched">Reject</button>
        <button id="btn-split" type="button" title="the ticked units leave and form a cluster of their own">Split off ticked units</button>
        <span>merge with cluster <input id="merge-with" type="number" min="1"
          value="${d.action === "merge" ? d.with : (k && k.cluster !== null ? k.cluster : "")}"></span>
        <button id="btn-merge" type="button">Merge</button>
        <button id="btn-clear" type="button" class="quiet">Clear</button>
        <input id="note" type="text" placeholder="note (optional)" value="${esc(d.note || "")}">
      </div>
      <div id="message">${d.action ? "decision: " + decisionText(d) : ""}</div>
      <img id="cluster-img" loading="lazy" src="img/cluster_${c.id}.png"
        alt="cluster ${c.id}: waveforms before and after motion correction, ACGs, depth per session, ${esc(LINK.label)} between its units">
      <table class="units"><thead><tr><th>split</th><th>unit</th><th>session</th>
        <th>corrected depth (\u00b5m)</th><th>amplitude (\u00b5V)</th>${rated ? "<th>firing rate (Hz)</th>" : ""}</tr></thead><tbody>${units}</tbody></table>`;
    document.getElementById("btn-accept").onclick = () => decide(id, { action: "accept" });
    document.getElementById("btn-reject").onclick = () => decide(id, { action: "reject" });
    document.getElementById("btn-split").onclick = () => split(id);
    document.getElementById("btn-merge").onclick = () => merge(id);
    document.getElementById("btn-clear").onclick = () => decide(id, null);
    if (g) {
      document.getElementById("btn-tick").onclick = () => {
        for (const box of document.querySelectorAll("#view .split-unit")) box.checked = g.units.includes(Number(box.value));
        say("the smaller group is ticked: Split off ticked units records the split");
      };
    }
    for (const jump of document.querySelectorAll("#view a.jump")) {
      jump.onclick = () => show(Number(jump.dataset.id));
    }
  }

  function scrollToRow(tr) {
    // vertically only, inside the table's own scroll box (scrollIntoView would also move the
    // page and the table sideways)
    const box = tr.closest(".scroll"), head = box.querySelector("thead").offsetHeight;
    if (tr.offsetTop - head < box.scrollTop) box.scrollTop = tr.offsetTop - head;
    else if (tr.offsetTop + tr.offsetHeight > box.scrollTop + box.clientHeight)
      box.scrollTop = tr.offsetTop + tr.offsetHeight - box.clientHeight;
  }

  function say(text, error) {
    const m = document.getElementById("message");
    m.innerHTML = text;
    m.className = error ? "error" : "";
  }

  function decide(id, decision) {
    // a cluster that is accepted or rejected takes no other decision (apply-curation checks it)
    if (decision && (decision.action === "accept" || decision.action === "reject")) {
      const other = Object.entries(decisions).find(([k, d]) => d.action === "merge" && d.with === id && Number(k) !== id);
      if (other) return say(`cluster ${other[0]} is to merge with this one: clear that first`, true);
    }
    if (decision) {
      const note = document.getElementById("note");
      if (note && note.value.trim()) decision.note = note.value.trim();
      decisions[id] = decision;
    } else {
      delete decisions[id];
    }
    save();
    refreshRow(id);
    say(decision ? "decision: " + decisionText(decision) : "no decision");
  }

  function split(id) {
    const c = BY_ID.get(id);
    const units = [...document.querySelectorAll("#view .split-unit:checked")].map((b) => Number(b.value));
    if (!units.length) return say("tick the units that leave the cluster first", true);
    if (units.length === c.units.length) return say("every unit would leave: use Reject", true);
    decide(id, { action: "split", units: units.sort((a, b) => a - b) });
  }

  function merge(id) {
    const other = Number(document.getElementById("merge-with").value);
    const c = BY_ID.get(id), o = BY_ID.get(other);
    if (!o || other === id) return say("give the id of another cluster", true);
    const sessions = new Set(c.units.map((u) => u[1]));
    const clash = o.units.find((u) => sessions.has(u[1]));
    if (clash) return say(`cluster ${other} also has a unit in session ${clash[1]}: one neuron has one unit per session`, true);
    const verdict = decisions[other];
    if (verdict && (verdict.action === "accept" || verdict.action === "reject"))
      return say(`cluster ${other} is marked ${verdict.action}: clear that first`, true);
    decide(id, { action: "merge", with: other });
  }

  function download() {
    const list = Object.keys(decisions).map(Number).sort((a, b) => a - b)
      .map((id) => Object.assign({ cluster: id }, decisions[id]));
    const text = JSON.stringify({ run: DATA.folder, link: LINK.label, decisions: list }, null, 2) + "\n";
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([text], { type: "application/json" }));
    a.download = "curation.json";
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  // ---------------------------------------------------------------- wiring
  header();
  columnHeads();
  renderTable();
  save();
  document.querySelector("#clusters tbody").addEventListener("click", (e) => {
    const tr = e.target.closest("tr");
    if (tr) show(Number(tr.dataset.id));
  });
  for (const id of ["only-flagged", "only-undecided"])
    document.getElementById(id).addEventListener("change", renderTable);
  document.getElementById("download").addEventListener("click", download);
  document.getElementById("clear-all").addEventListener("click", () => {
    if (!Object.keys(decisions).length || !confirm("Forget every decision on this page?")) return;
    decisions = {};
    save();
    renderTable();
    if (picked !== null) show(picked);
  });
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" || e.metaKey || e.ctrlKey || e.altKey) return;
    const at = order.findIndex((c) => c.id === picked);
    if (e.key === "j" || e.key === "ArrowDown") { if (order[at + 1]) show(order[at + 1].id); e.preventDefault(); }
    else if (e.key === "k" || e.key === "ArrowUp") { if (at > 0) show(order[at - 1].id); e.preventDefault(); }
    else if (e.key === "a" && picked !== null) decide(picked, { action: "accept" });
    else if (e.key === "r" && picked !== null) decide(picked, { action: "reject" });
  });
})();
