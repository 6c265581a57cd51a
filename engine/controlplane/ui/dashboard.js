// Progressive enhancement only: every page works without this script.
// - Pages marked data-live poll /fleets/F/live (a long-poll over the events store) and add
//   new events to the table and the new stage to each server badge they name.
// - Action buttons ask for confirmation in place, then post straight to the confirmed form.
"use strict";

(function () {
  const main = document.querySelector("main[data-live]");
  const status = document.getElementById("live-status");

  function say(text) {
    if (status) status.textContent = text;
  }

  function cell(text, tag) {
    const element = document.createElement(tag || "td");
    element.textContent = text;
    return element;
  }

  function addEvent(event, table) {
    const empty = table.querySelector("tr.empty");
    if (empty) empty.remove();
    const row = document.createElement("tr");
    row.className = "fresh tone-" + event.tone;
    const when = document.createElement("td");
    const time = document.createElement("time");
    time.title = event.at + " UTC";
    time.textContent = "just now";
    when.appendChild(time);
    row.appendChild(when);
    if (table.closest("table").querySelectorAll("thead th").length > 4) {
      row.appendChild(cell(event.fleet));
    }
    row.appendChild(cell(event.server || ""));
    const kind = document.createElement("td");
    kind.appendChild(cell(event.kind, "code"));
    row.appendChild(kind);
    row.appendChild(cell(event.message));
    table.insertBefore(row, table.firstChild);
  }

  function setStage(server, stage) {
    document.querySelectorAll("[data-stage-of]").forEach(function (badge) {
      if (badge.dataset.stageOf !== server || badge.textContent === stage.stage) return;
      badge.textContent = stage.stage;
      badge.className = "stage stage-" + stage.tone + " changed";
    });
  }

  function matches(event) {
    if (main.dataset.server && event.server !== main.dataset.server) return false;
    if (main.dataset.kind && !event.kind.startsWith(main.dataset.kind)) return false;
    return true;
  }

  async function poll(since) {
    const query = new URLSearchParams({ since: String(since), wait: "25" });
    if (main.dataset.server) query.set("server", main.dataset.server);
    let next = since;
    let delay = 0;
    try {
      const pending = fetch(main.dataset.live + "?" + query, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      say("Live");
      const answer = await pending;
      if (answer.status === 401) {
        say("Signed out: reload to sign in again.");
        return;
      }
      if (answer.status >= 400 && answer.status < 500 && answer.status !== 429) {
        // Refused for good (the fleet is gone, or no longer granted): say why, and stop.
        let why = "HTTP " + answer.status;
        try {
          why = (await answer.json()).error.message || why;
        } catch (unreadable) {
          // the status says it
        }
        say("Live updates stopped: " + why + ".");
        return;
      }
      if (!answer.ok) throw new Error("HTTP " + answer.status);
      const body = await answer.json();
      const table = document.getElementById("events");
      body.events.filter(matches).forEach(function (event) {
        if (table) addEvent(event, table);
      });
      Object.entries(body.stages).forEach(function (entry) {
        setStage(entry[0], entry[1]);
      });
      next = body.next;
    } catch (error) {
      say("Live updates paused; retrying.");
      delay = 5000;
    }
    window.setTimeout(function () { poll(next); }, delay);
  }

  if (main && window.fetch) poll(Number(main.dataset.since || "0"));

  document.querySelectorAll("button[data-confirm]").forEach(function (button) {
    button.addEventListener("click", function (click) {
      if (!window.confirm(button.dataset.confirm)) {
        click.preventDefault();
        return;
      }
      const confirmed = document.createElement("input");
      confirmed.type = "hidden";
      confirmed.name = "confirm";
      confirmed.value = "yes";
      button.form.appendChild(confirmed);
    });
  });
})();
