// mailfleet console behaviour: confirmations, drag-and-drop upload with progress, the
// send-rate chart and the preview tabs. Plain JavaScript, no build step; no inline scripts
// in the pages, so a strict Content-Security-Policy can forbid them.
(function () {
  "use strict";

  // <form data-confirm="Pause this campaign?">: ask before submitting.
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute && event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { event.preventDefault(); event.stopPropagation(); }
  }, true);

  // Upload progress: htmx reports the XHR's upload progress on the form.
  document.addEventListener("htmx:xhr:progress", function (event) {
    var bar = document.getElementById("upload-progress");
    if (bar && event.detail.lengthComputable) {
      bar.value = Math.round((event.detail.loaded / event.detail.total) * 100);
    }
  });

  // Merge-field picker: insert `{{ field }}` at the cursor of the HTML editor.
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-insert]");
    if (!button) { return; }
    var area = document.getElementById(button.getAttribute("data-target"));
    var text = button.getAttribute("data-insert");
    var start = area.selectionStart, end = area.selectionEnd;
    area.value = area.value.slice(0, start) + text + area.value.slice(end);
    area.focus();
    area.selectionStart = area.selectionEnd = start + text.length;
  });

  function setUpDropzone(zone) {
    var input = zone.querySelector("input[type=file]");
    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (e) { e.preventDefault(); zone.classList.add("over"); });
    });
    ["dragleave", "drop"].forEach(function (name) {
      zone.addEventListener(name, function (e) { e.preventDefault(); zone.classList.remove("over"); });
    });
    zone.addEventListener("drop", function (e) {
      if (e.dataTransfer && e.dataTransfer.files.length) { input.files = e.dataTransfer.files; }
    });
  }

  function drawChart(box) {
    if (!window.uPlot) { return; }
    fetch(box.getAttribute("data-src"), { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (data) {
        box.textContent = "";
        var width = Math.max(280, box.clientWidth);
        new window.uPlot({
          width: width, height: 220, title: "Emails sent per second",
          series: [{}, { label: "emails/s", stroke: "#0b5cad", fill: "rgba(11,92,173,.12)" }],
          axes: [{}, { label: "emails/s" }]
        }, [data.t, data.per_second], box);
      });
  }

  function setUpTabs(tabs) {
    var buttons = tabs.querySelectorAll("[role=tab]");
    buttons.forEach(function (button) {
      button.addEventListener("click", function () {
        buttons.forEach(function (b) {
          var selected = b === button;
          b.setAttribute("aria-selected", selected ? "true" : "false");
          document.getElementById(b.getAttribute("aria-controls")).hidden = !selected;
        });
      });
    });
  }

  function once(root, selector, setUp) {
    var found = Array.prototype.slice.call(root.querySelectorAll(selector));
    if (root.matches && root.matches(selector)) { found.push(root); }
    found.forEach(function (el) {
      if (!el.hasAttribute("data-ready")) { el.setAttribute("data-ready", ""); setUp(el); }
    });
  }

  function init(root) {
    once(root, ".dropzone", setUpDropzone);
    once(root, "[data-chart]", drawChart);
    once(root, ".tabs", setUpTabs);
  }

  document.addEventListener("DOMContentLoaded", function () {
    init(document);
    var chart = document.querySelector("[data-chart][data-live]");
    if (chart) { window.setInterval(function () { drawChart(chart); }, 5000); }
  });
  document.addEventListener("htmx:load", function (event) { init(event.detail.elt); });
})();
