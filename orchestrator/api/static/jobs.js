// The job list: polls GET /v1/jobs every two seconds while any job is unfinished.
"use strict";

(() => {
  const body = document.querySelector("#jobs tbody");
  const errorBox = document.getElementById("error");

  function row(job) {
    const tr = Mars.el("tr", { "data-job": job.id });
    const link = Mars.el("a", { href: "/dashboard/jobs/" + encodeURIComponent(job.id) }, job.id);
    const first = Mars.el("td");
    first.appendChild(link);
    tr.appendChild(first);
    tr.appendChild(Mars.el("td", { class: "status " + job.status }, job.status));
    tr.appendChild(Mars.el("td", {}, job.provider + "/" + job.model));
    tr.appendChild(Mars.el("td", {}, job.method));
    tr.appendChild(Mars.el("td", {}, Mars.fmt(job.budget)));
    // K is an upper bound: how many traces the job launched (known once it finished)
    const launched = job.launched === null || job.launched === undefined
      ? "–"
      : "launched " + job.launched + " of " + job.budget + (job.waves > 1 ? " in " + job.waves + " waves" : "");
    tr.appendChild(Mars.el("td", { class: "launched" }, launched));
    tr.appendChild(Mars.el("td", { class: "answer" }, job.answer === null ? "–" : job.answer));
    tr.appendChild(Mars.el("td", {}, job.stop_reason || "–"));
    // all-in saving against plain SC, signed: a job that cost more shows it
    const a = job.accounting;
    const saved = a ? (a.saved_fraction < 0 ? "−" : "") + (100 * Math.abs(a.saved_fraction || 0)).toFixed(0) + "%" : "–";
    tr.appendChild(Mars.el("td", { class: "saved" + (a && a.saved_fraction < 0 ? " over-sc" : "") }, saved));
    return tr;
  }

  async function refresh() {
    try {
      const data = await Mars.getJSON("/v1/jobs?limit=200", refresh);
      body.replaceChildren(...data.jobs.map(row));
      document.getElementById("count").textContent = "(" + data.jobs.length + ")";
      errorBox.textContent = "";
      const live = data.jobs.some((j) => j.status === "queued" || j.status === "running");
      setTimeout(refresh, live ? 2000 : 5000);
    } catch (err) {
      errorBox.textContent = String(err.message || err);
    }
  }

  refresh();
})();
