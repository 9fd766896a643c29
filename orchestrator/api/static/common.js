// Shared by the dashboard pages: authenticated fetch and an SSE reader over fetch (so the API key can
// travel in a header; EventSource cannot send one). No dependencies, no build step.
"use strict";

const Mars = (() => {
  const KEY = "mars.apiKey";

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const key = sessionStorage.getItem(KEY);
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  function askForKey(onSaved) {
    const box = document.getElementById("auth");
    if (!box) return;
    box.classList.add("visible");
    const form = box.querySelector("form");
    form.onsubmit = (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY, form.querySelector("input").value.trim());
      box.classList.remove("visible");
      onSaved();
    };
  }

  async function getJSON(url, retry) {
    const resp = await fetch(url, { headers: headers({ Accept: "application/json" }) });
    if (resp.status === 401) {
      askForKey(retry);
      throw new Error("an API key is needed");
    }
    const body = await resp.json();
    if (!resp.ok) throw new Error((body.error && body.error.message) || resp.statusText);
    return body;
  }

  // Reads a text/event-stream response and calls onEvent({event, id, data}) per event. Resumes after a
  // dropped connection with Last-Event-ID; resolves when the server closes the stream normally.
  async function follow(url, onEvent, state) {
    state = state || { lastId: null };
    for (let attempt = 0; attempt < 20; attempt++) {
      const h = headers({ Accept: "text/event-stream" });
      if (state.lastId) h["Last-Event-ID"] = state.lastId;
      let resp;
      try {
        resp = await fetch(url, { headers: h });
      } catch (err) {
        await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
        continue;
      }
      if (!resp.ok) throw new Error("events: HTTP " + resp.status);
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let fields = { event: "message", id: null, data: [] };
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return state;
          buffer += decoder.decode(value, { stream: true });
          let nl;
          while ((nl = buffer.indexOf("\n")) >= 0) {
            const line = buffer.slice(0, nl).replace(/\r$/, "");
            buffer = buffer.slice(nl + 1);
            if (line === "") {
              if (fields.data.length) {
                if (fields.id) state.lastId = fields.id;
                onEvent({ event: fields.event, id: fields.id, data: fields.data.join("\n") });
              }
              fields = { event: "message", id: null, data: [] };
            } else if (line[0] !== ":") {
              const colon = line.indexOf(":");
              const name = colon < 0 ? line : line.slice(0, colon);
              let val = colon < 0 ? "" : line.slice(colon + 1);
              if (val[0] === " ") val = val.slice(1);
              if (name === "data") fields.data.push(val);
              else if (name === "event") fields.event = val;
              else if (name === "id") fields.id = val;
            }
          }
        }
      } catch (err) {
        await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
      }
    }
    return state;
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(n) {
    if (n === null || n === undefined) return "–";
    if (typeof n === "number" && !Number.isInteger(n)) return n.toFixed(2);
    return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  // The all-in saving against plain self-consistency in words (as accounting.verdict says it).
  function verdict(fraction, budget) {
    const pct = 100 * (fraction || 0);
    if (pct < 0) return "cost " + (-pct).toFixed(0) + "% more than running all " + budget + " traces";
    return "saved " + pct.toFixed(0) + "% against running all " + budget + " traces";
  }

  return { headers, getJSON, follow, el, fmt, verdict };
})();
