// The customer portal: polls its own session's data every second and draws it. No library,
// no request to anywhere but this host; the session is an HttpOnly cookie this script never sees.
"use strict";

(function () {
  var POLL_MS = 1000;        // a call that ended shows within about a second
  var HIDDEN_POLL_MS = 10000; // a tab nobody looks at asks less often
  var LEDGER_EVERY_MS = 15000; // the ledger views also refresh on their own now and then
  var PAGE = 10;
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var state = { requests: null, ledgerAt: 0, statementsAt: 0, cursors: [null], next: null, stopped: false };

  function $(id) { return document.getElementById(id); }
  function text(id, value) { var el = $(id); if (el && el.textContent !== value) el.textContent = value; }

  function money(value, currency) {
    if (value === null || value === undefined) return "—";
    var s = String(value);
    var neg = s.charAt(0) === "-";
    if (neg) s = s.slice(1);
    var parts = s.split(".");
    var whole = parts[0].replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    var frac = (parts[1] || "").replace(/0+$/, "");
    if (frac.length < 2) frac = (frac + "00").slice(0, 2);
    var out = whole + "." + frac;
    return (neg ? "-" : "") + (currency && currency !== "USD" ? out + " " + currency : "$" + out);
  }
  function count(n) { return Number(n || 0).toLocaleString("en-US"); }
  function day(iso) {
    return new Date(iso).toLocaleDateString("en-US", { month: "short", day: "numeric", year: "numeric" });
  }
  function time(iso) {
    var d = new Date(iso);
    return d.toLocaleDateString("en-US", { month: "short", day: "numeric" }) + " " +
      d.toLocaleTimeString("en-US", { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  }
  function cell(row, value, cls) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = value === null || value === undefined || value === "" ? "—" : value;
    row.appendChild(td);
    return td;
  }

  function get(path) {
    return fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (resp) {
        if (resp.status === 401) { ended(); throw new Error("session ended"); }
        return resp.json().then(function (body) {
          if (!resp.ok) throw new Error(body.error ? body.error.message : "HTTP " + resp.status);
          return body;
        });
      });
  }

  function ended() {
    state.stopped = true;
    var live = $("live");
    live.className = "live";
    live.textContent = "session ended — reload to sign in";
  }

  // -- summary ----------------------------------------------------------------------------
  function renderSummary(s) {
    text("amount-due", money(s.amount_due, s.currency));
    text("requests", count(s.requests));
    text("period-range", day(s.period.start) + " – " + day(s.period.end) + " · " + s.period.interval);
    var left = Math.max(0, new Date(s.period.end) - new Date(s.now));
    var days = Math.floor(left / 86400000), hours = Math.floor(left % 86400000 / 3600000);
    text("period-ends", days > 0 ? "in " + days + " d " + hours + " h" : "in " + hours + " h");
    ["input", "cached_input", "cache_write", "output", "reasoning", "total"].forEach(function (k) {
      var v = s.tokens[k];
      if (k === "cache_write") v = (s.tokens.cache_write || 0) + (s.tokens.cache_write_1h || 0);
      text("tok-" + k, count(v));
    });
    renderCap(s);
    renderModels(s);
  }

  var ACTIONS = {
    block: "At the cap, new calls are refused (HTTP 429, spend_cap_reached) until the next period or a higher cap.",
    throttle: "At the cap, calls go on but are slowed down to {rpm} per minute.",
    notify: "At the cap, you are notified; calls go on and are billed."
  };

  function renderCap(s) {
    var cap = s.cap, policy = s.cap_policy, bar = $("cap-progress");
    if (!cap) {
      text("cap-text", "No spend cap");
      text("cap-share", "");
      bar.value = 0;
      bar.className = "";
      text("cap-action", "Usage is not limited. Set a cap of your own below to stop spending at an amount.");
    } else {
      var share = Number(cap.amount) > 0 ? Math.min(100, 100 * Number(cap.spent) / Number(cap.amount)) : 100;
      text("cap-text", money(cap.spent, s.currency) + " of " + money(cap.amount, s.currency) +
        " · " + money(cap.remaining, s.currency) + " left");
      text("cap-share", share.toFixed(share < 10 ? 1 : 0) + "%");
      bar.value = share;
      bar.className = share >= 90 ? "high" : share >= 70 ? "mid" : "";
      var action = (ACTIONS[cap.action] || ACTIONS.block).replace("{rpm}", policy.throttle_rpm);
      if (cap.mode === "soft") action += " (Soft cap: calls already running may pass it a little.)";
      text("cap-action", action);
    }
    text("cap-limit", (policy.own ? "Your own cap: " + money(policy.own, s.currency) + ". " : "You have not set a cap. ") +
      (policy.admin ? "Your provider's limit is " + money(policy.admin, s.currency) + "; yours can be at most that."
        : "Your provider sets no limit."));
  }

  function renderModels(s) {
    var body = document.querySelector("#models tbody");
    body.textContent = "";
    if (!s.by_model.length) {
      var row = body.insertRow();
      cell(row, "No calls this period yet.").colSpan = 5;
    }
    s.by_model.forEach(function (m) {
      var row = body.insertRow();
      cell(row, m.model);
      cell(row, count(m.requests), "num");
      cell(row, count(m.tokens.input), "num wide-only");
      cell(row, count(m.tokens.output), "num wide-only");
      cell(row, money(m.amount, s.currency), "num");
    });
  }

  // -- the daily chart (SVG, drawn here) ----------------------------------------------------
  var SVG = "http://www.w3.org/2000/svg";
  function svg(name, attrs, parent) {
    var el = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    parent.appendChild(el);
    return el;
  }

  var lastDays = null;
  function renderChart(data) {
    lastDays = data;
    var chart = $("chart");
    // Drawn at the element's own width, so its text stays legible from a phone to a desktop.
    var W = Math.max(280, Math.round(chart.getBoundingClientRect().width) || 640), H = 200;
    var left = 4, right = 4, bottom = 22, top = 20;
    chart.setAttribute("viewBox", "0 0 " + W + " " + H);
    chart.textContent = "";
    var days = data.days, peak = 0;
    days.forEach(function (d) { peak = Math.max(peak, Number(d.amount)); });
    var step = (W - left - right) / Math.max(days.length, 1), today = new Date().toISOString().slice(0, 10);
    var every = Math.ceil(days.length / Math.max(2, Math.floor(W / 70)));
    svg("line", { x1: left, x2: W - right, y1: H - bottom, y2: H - bottom, "class": "axis" }, chart);
    svg("text", { x: left, y: 12 }, chart).textContent = peak > 0 ? "max " + money(String(peak)) + " / day" : "no usage yet";
    days.forEach(function (d, i) {
      var h = peak > 0 ? (H - bottom - top) * Number(d.amount) / peak : 0;
      var x = left + i * step + step * 0.15, w = Math.max(1, step * 0.7);
      if (Number(d.amount) > 0 && h < 2) h = 2;
      var rect = svg("rect", { x: x.toFixed(1), y: (H - bottom - h).toFixed(1), width: w.toFixed(1),
        height: h.toFixed(1), "class": d.date === today ? "bar today" : "bar" }, chart);
      svg("title", {}, rect).textContent = d.date + ": " + money(d.amount) + ", " + count(d.requests) +
        " calls, " + count(d.tokens) + " tokens";
      var last = i === days.length - 1;
      if ((i % every === 0 && i < days.length - every / 2) || last) {
        svg("text", { x: last ? W - right : i === 0 ? left : (x + w / 2).toFixed(1), y: H - 6,
          "text-anchor": last ? "end" : i === 0 ? "start" : "middle" }, chart).textContent = d.date.slice(5);
      }
    });
  }
  var resizing = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(function () { if (lastDays) renderChart(lastDays); }, 100);
  });

  // -- events (paged) ---------------------------------------------------------------------------
  function loadEvents() {
    var cursor = state.cursors[state.cursors.length - 1];
    return get("/portal/api/events?limit=" + PAGE + (cursor ? "&before=" + encodeURIComponent(cursor) : ""))
      .then(function (page) {
        var body = document.querySelector("#events tbody");
        body.textContent = "";
        if (!page.data.length) cell(body.insertRow(), "No calls yet.").colSpan = 8;
        page.data.forEach(function (e) {
          var row = body.insertRow();
          cell(row, time(e.ts));
          cell(row, e.model || e.metric);
          cell(row, e.session);
          cell(row, e.feature);
          cell(row, count(e.input_tokens), "num wide-only");
          cell(row, count(e.output_tokens), "num wide-only");
          cell(row, money(e.amount, e.currency), "num");
          var st = cell(row, e.status + (e.estimated ? " · est." : ""), "wide-only");
          if (e.status !== "ok") st.className += " tag " + e.status;
        });
        state.next = page.next;
        $("events-older").disabled = !page.next;
        $("events-newer").disabled = state.cursors.length <= 1;
      });
  }
  $("events-older").addEventListener("click", function () {
    if (state.next) { state.cursors.push(state.next); loadEvents(); }
  });
  $("events-newer").addEventListener("click", function () {
    if (state.cursors.length > 1) { state.cursors.pop(); loadEvents(); }
  });

  // -- statements -------------------------------------------------------------------------------
  function loadStatements() {
    return get("/portal/api/statements").then(function (list) {
      var body = document.querySelector("#statements tbody");
      body.textContent = "";
      if (!list.data.length) cell(body.insertRow(), "No closed period yet.").colSpan = 4;
      list.data.forEach(function (st) {
        var row = body.insertRow();
        cell(row, day(st.start) + " – " + day(st.end));
        cell(row, money(st.total, st.currency), "num");
        cell(row, count(st.events), "num wide-only");
        var a = document.createElement("a");
        a.href = "/portal/api/statement.csv?period=" + encodeURIComponent(st.period);
        a.textContent = "CSV";
        a.setAttribute("download", "");
        var td = document.createElement("td");
        td.appendChild(a);
        row.appendChild(td);
      });
    });
  }

  // -- the loop ---------------------------------------------------------------------------------
  function tick() {
    if (state.stopped) return;
    state.inflight = true;
    get("/portal/api/summary").then(function (s) {
      renderSummary(s);
      var live = $("live");
      live.className = "live on";
      live.textContent = "live · " + new Date().toLocaleTimeString("en-US", { hour12: false });
      var now = Date.now(), work = [];
      if (s.requests !== state.requests || now - state.ledgerAt > LEDGER_EVERY_MS) {
        state.requests = s.requests;
        state.ledgerAt = now;
        work.push(get("/portal/api/daily").then(renderChart));
        if (state.cursors.length === 1) work.push(loadEvents());
      }
      if (now - state.statementsAt > 60000) { state.statementsAt = now; work.push(loadStatements()); }
      return Promise.all(work);
    }).catch(function () {
      if (!state.stopped) { $("live").className = "live"; $("live").textContent = "reconnecting…"; }
    }).then(function () {
      state.inflight = false;
      if (!state.stopped) state.timer = setTimeout(tick, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
    });
  }
  document.addEventListener("visibilitychange", function () {
    // one loop only: a tick in flight schedules the next one itself
    if (!document.hidden && !state.stopped && !state.inflight) { clearTimeout(state.timer); tick(); }
  });

  // -- the own-cap form ---------------------------------------------------------------------
  $("cap-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var remove = event.submitter && event.submitter.id === "cap-remove";
    var fields = new URLSearchParams();
    if (remove) fields.set("remove", "1"); else fields.set("amount", $("cap-amount").value.trim());
    var message = $("cap-message");
    message.className = "error-text";
    message.textContent = "";
    fetch("/portal/api/cap", {
      method: "POST", credentials: "same-origin", body: fields,
      headers: { Accept: "application/json", "X-CSRF-Token": csrf }
    }).then(function (resp) {
      return resp.json().then(function (body) {
        if (!resp.ok) throw new Error(body.error ? body.error.message : "HTTP " + resp.status);
        message.className = "ok-text";
        message.textContent = body.customer_cap ? "Your cap is now " + money(body.customer_cap) + "." : "Your cap is removed.";
        $("cap-amount").value = "";
      });
    }).catch(function (err) { message.textContent = err.message; });
  });

  tick();
})();
