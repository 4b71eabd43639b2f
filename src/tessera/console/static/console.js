// The overview's live tail: server-sent events from /console/tail, newest on top.
(function () {
  "use strict";
  var MAX_ROWS = 50;
  function cell(text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }
  function start() {
    var table = document.getElementById("tail");
    if (!table || !window.EventSource) return;
    var body = table.querySelector("tbody");
    var state = document.getElementById("tail-state");
    var source = new EventSource(table.getAttribute("data-src"));
    source.onopen = function () { if (state) state.textContent = "live"; };
    source.onerror = function () { if (state) state.textContent = "reconnecting…"; };
    source.addEventListener("ingest", function (message) {
      var items = JSON.parse(message.data);
      var empty = body.querySelector("tr.empty");
      if (empty) empty.remove();
      // items come oldest first: putting each on top leaves the newest there
      for (var i = 0; i < items.length; i++) {
        var item = items[i];
        var tr = document.createElement("tr");
        if (item.more) {
          tr.className = "more";
          tr.appendChild(cell("… and " + item.more + " more events of the same request", "muted"));
          tr.firstChild.colSpan = 5;
        } else {
          tr.setAttribute("data-uid", item.uid);
          tr.appendChild(cell(item.received_at.replace("T", " ").slice(0, 19)));
          tr.appendChild(cell(item.source));
          tr.appendChild(cell(item.type, "mono"));
          tr.appendChild(cell(item.id, "mono"));
          tr.appendChild(cell(item.identifiers.join(", "), "mono"));
        }
        body.insertBefore(tr, body.firstChild);
      }
      while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
