// The upload page (gateway/templates/upload.html): sends the chosen files one at a time to
// POST /-/upload, shows each one's upload progress, then the rows imported so far (the
// answer's JSON lines), then a link to its table.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("upload");
  const list = document.getElementById("uploads");
  const button = form.querySelector("button[type=submit]");
  const maxBytes = Number(form.dataset.maxBytes);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    for (const file of Array.from(form.elements.file.files)) {
      await upload(file);
    }
    button.disabled = false;
  });

  function upload(file) {
    const item = document.createElement("li");
    const name = document.createElement("strong");
    const bar = document.createElement("progress");
    const status = document.createElement("p");
    name.textContent = file.name;
    bar.max = 1;
    bar.value = 0;
    bar.setAttribute("aria-label", `Upload of ${file.name}`);
    status.setAttribute("role", "status");
    item.append(name, bar, status);
    list.append(item);
    if (file.size > maxBytes) {
      fail(status, `This file is larger than this site's limit of ${maxBytes / 1048576} MB.`);
      return Promise.resolve();
    }
    const data = new FormData();
    for (const field of ["database", "table", "mode"]) {
      data.append(field, form.elements[field].value);
    }
    data.append("file", file, file.name);
    return new Promise((resolve) => {
      const request = new XMLHttpRequest();
      let read = 0;
      const readLines = () => {
        const text = request.responseText;
        let end;
        while ((end = text.indexOf("\n", read)) >= 0) {
          show(JSON.parse(text.slice(read, end)), status);
          read = end + 1;
        }
      };
      request.open("POST", "/-/upload");
      request.setRequestHeader("Accept", "application/x-ndjson");
      request.upload.onprogress = (e) => {
        if (e.lengthComputable) {
          bar.value = e.loaded / e.total;
          status.textContent = `Uploading… ${Math.floor((100 * e.loaded) / e.total)} %`;
        }
      };
      request.upload.onload = () => {
        bar.value = 1;
        status.textContent = "Uploaded; importing…";
      };
      request.onprogress = readLines;
      request.onload = () => {
        if (request.status === 200) {
          readLines();
        } else {
          let message = `The upload failed (HTTP ${request.status}).`;
          try {
            message = JSON.parse(request.responseText).message;
          } catch (error) {
            // not JSON: keep the generic message
          }
          fail(status, message);
        }
        resolve();
      };
      request.onerror = () => {
        fail(status, "The upload failed: the connection was lost. Try again.");
        resolve();
      };
      request.send(data);
    });
  }

  function show(event, status) {
    if (event.event === "progress") {
      status.textContent = `Importing… ${event.rows.toLocaleString()} rows`;
    } else if (event.event === "done") {
      const link = document.createElement("a");
      link.href = event.url;
      link.textContent = `${event.database} / ${event.table}`;
      status.replaceChildren(
        `Imported ${event.rows.toLocaleString()} rows into `, link, ".");
      if (event.warning) {
        status.append(" ", event.warning);
      }
    } else if (event.event === "error") {
      fail(status, event.message);
    }
  }

  function fail(status, message) {
    status.textContent = message;
    status.className = "error";
  }
});
