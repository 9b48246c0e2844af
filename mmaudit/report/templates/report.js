(function () {
  "use strict";
  function openAround(el) {
    for (let d = el && el.closest("details"); d; d = d.parentElement.closest("details")) {
      d.open = true;
    }
  }
  function showTarget() {
    const id = decodeURIComponent(location.hash.slice(1));
    const el = id && document.getElementById(id);
    if (el) { openAround(el); el.scrollIntoView(); }
  }
  document.addEventListener("input", function (e) {
    const box = e.target;
    if (!box.matches || !box.matches("input.filter")) return;
    const q = box.value.trim().toLowerCase();
    box.closest("details").querySelectorAll("tbody tr").forEach(function (r) {
      r.hidden = q !== "" && !r.cells[0].textContent.toLowerCase().includes(q);
    });
  });
  document.addEventListener("click", function (e) {
    const th = e.target.closest && e.target.closest("th.sort");
    if (!th) return;
    const body = th.closest("table").tBodies[0];
    const i = th.cellIndex;
    const up = th.dataset.dir !== "asc";
    th.dataset.dir = up ? "asc" : "desc";
    const key = function (r) {
      const t = r.cells[i].textContent.trim();
      const n = parseFloat(t.replace(/^< /, ""));
      return isNaN(n) ? t : n;
    };
    const rows = Array.from(body.rows).sort(function (a, b) {
      const x = key(a), y = key(b);
      let c;
      if (typeof x === typeof y) c = x < y ? -1 : x > y ? 1 : 0;
      else c = typeof x === "number" ? -1 : 1;
      return up ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
  window.addEventListener("hashchange", showTarget);
  window.addEventListener("beforeprint", function () {
    document.querySelectorAll("details").forEach(function (d) { d.open = true; });
  });
  showTarget();
})();
