// The upload page (gateway/templates/upload.html): sends the chosen files one at a time to
// POST /-/upload, shows each one's upload progress, then the rows imported so far (the
// answer's JSON lines), then a link to its table and what the importer noted. Cancel stops the
// upload under way (the gateway then imports nothing) and the ones still waiting; leaving the
// page while uploading asks first. Owners get the site's tables with a Delete button each.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("upload");
  const list = document.getElementById("uploads");
  const start = document.getElementById("start");
  const cancel = document.getElementById("cancel");
  const maxBytes = Number(form.dataset.maxBytes);
  const tables = document.getElementById("tables");
  let uploading = false;
  let cancelled = false;
  let current = null; // the XMLHttpRequest under way

  window.addEventListener("beforeunload", (event) => {
    if (uploading) {
      event.preventDefault();
      event.returnValue = ""; // the browser asks "Leave site? Changes you made may not be saved."
    }
  });

  cancel.addEventListener("click", () => {
    cancelled = true;
    if (current) {
      current.abort();
    }
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const files = Array.from(form.elements.file.files);
    const items = files.map(addItem);
    setUploading(true);
    for (const [index, file] of files.entries()) {
      if (cancelled) {
        end(items[index], "cancelled", "Not uploaded: you cancelled.");
      } else {
        await upload(file, items[index]);
      }
    }
    setUploading(false);
    loadTables();
  });

  function setUploading(on) {
    uploading = on;
    cancelled = false;
    start.disabled = on;
    start.textContent = on ? "Uploading…" : "Upload";
    cancel.hidden = !on;
  }

  function addItem(file) {
    const item = document.createElement("li");
    const name = document.createElement("strong");
    const bar = document.createElement("progress");
    const status = document.createElement("p");
    name.textContent = file.name;
    bar.max = 1;
    bar.value = 0;
    bar.setAttribute("aria-label", `Upload of ${file.name}`);
    status.setAttribute("role", "status");
    status.textContent = "Waiting…";
    item.append(name, bar, status);
    list.append(item);
    return { item, bar, status };
  }

  function upload(file, shown) {
    if (file.size > maxBytes) {
      end(shown, "failed", `This file is larger than this site's limit of ${maxBytes / 1048576} MB.`);
      return Promise.resolve();
    }
    const data = new FormData();
    // encoding and delimiter must come before the file: the gateway starts reading it at once
    for (const field of ["database", "table", "mode", "encoding", "delimiter"]) {
      data.append(field, form.elements[field].value);
    }
    data.append("file", file, file.name);
    shown.status.textContent = "Uploading…";
    return new Promise((resolve) => {
      const request = new XMLHttpRequest();
      current = request;
      let read = 0;
      let answered = false;
      const readLines = () => {
        const text = request.responseText;
        let lineEnd;
        while ((lineEnd = text.indexOf("\n", read)) >= 0) {
          answered = show(JSON.parse(text.slice(read, lineEnd)), shown) || answered;
          read = lineEnd + 1;
        }
      };
      const finish = () => {
        current = null;
        resolve();
      };
      request.open("POST", "/-/upload");
      request.setRequestHeader("Accept", "application/x-ndjson");
      request.upload.onprogress = (e) => {
        if (e.lengthComputable) {
          shown.bar.value = e.loaded / e.total;
          shown.status.textContent = `Uploading… ${Math.floor((100 * e.loaded) / e.total)} %`;
        }
      };
      request.upload.onload = () => {
        shown.bar.value = 1;
        shown.status.textContent = "Uploaded; importing…";
      };
      request.onprogress = readLines;
      request.onload = () => {
        if (request.status === 200) {
          readLines();
          if (!answered) {
            end(shown, "failed", "The answer stopped before the import ended. Look at the"
              + " table before trying again.");
          }
        } else {
          let message = `The upload failed (HTTP ${request.status}).`;
          try {
            message = JSON.parse(request.responseText).message;
          } catch (error) {
            // not JSON: keep the generic message
          }
          end(shown, "failed", message);
        }
        finish();
      };
      request.onabort = () => {
        end(shown, "cancelled", "Cancelled: nothing was imported.");
        finish();
      };
      request.onerror = () => {
        end(shown, "failed", "The upload failed: the connection was lost. Try again.");
        finish();
      };
      request.send(data);
    });
  }

  // One line of the answer; true once it is the last (done or error).
  function show(event, shown) {
    if (event.event === "progress") {
      shown.status.textContent = `Importing… ${count(event.rows, "row")}`;
      return false;
    }
    if (event.event === "done") {
      const link = document.createElement("a");
      link.href = event.url;
      link.textContent = `${event.database} / ${event.table}`;
      shown.status.replaceChildren(`Imported ${count(event.rows, "row")} into `, link, ".");
      if (event.warning) {
        shown.status.append(" ", event.warning);
      }
      if (event.notes && event.notes.length) {
        const notes = document.createElement("ul");
        notes.className = "notes";
        notes.setAttribute("aria-label", `Notes on ${event.table}`);
        for (const note of event.notes) {
          const item = document.createElement("li");
          item.textContent = note;
          notes.append(item);
        }
        shown.item.append(notes);
      }
      addDatabase(event.database);
      return true;
    }
    if (event.event === "error") {
      end(shown, "failed", inTheFormsWords(event.message));
      return true;
    }
    return false;
  }

  function end(shown, how, message) {
    shown.bar.classList.add(how);
    shown.status.textContent = message;
    if (how === "failed") {
      shown.status.className = "error";
    }
  }

  // The API names the choices by their values (replace, append); the page by their labels.
  function inTheFormsWords(message) {
    const exists = message.match(/^(A table named .+ already exists in .+)\. Choose replace to overwrite it, or append to add these rows to it\.$/);
    if (exists) {
      return `${exists[1]}. Choose “Replace it with this file” or “Add this file's rows to it”`
        + " above, and upload it again.";
    }
    const missing = message.match(/^(There is no table .+ in .+) to append to; choose create\.$/);
    if (missing) {
      return `${missing[1]} to add this file's rows to. Choose “Stop, and keep it as it is” or`
        + " “Replace it with this file” above to create it, and upload it again.";
    }
    return message;
  }

  function count(n, noun) {
    return `${n.toLocaleString("en")} ${noun}${n === 1 ? "" : "s"}`;
  }

  // --- owners: the tables, and a Delete button for each ----------------------------------

  const databases = tables ? JSON.parse(tables.dataset.databases) : [];
  const tableList = document.getElementById("table-list");
  const tablesStatus = document.getElementById("tables-status");

  function addDatabase(name) {
    if (tables && !databases.includes(name)) {
      databases.push(name);
    }
  }

  async function loadTables() {
    if (!tables) {
      return;
    }
    const rows = [];
    for (const database of databases) {
      const response = await fetch(`/${tildeEncode(database)}.json`, {
        headers: { Accept: "application/json" },
      });
      if (!response.ok) {
        continue; // a new database the site does not serve yet
      }
      const info = await response.json();
      for (const table of info.tables.filter((t) => !t.hidden)) {
        rows.push(tableRow(database, table));
      }
    }
    tableList.replaceChildren(...rows);
    if (!rows.length) {
      tablesStatus.textContent = "There are no tables yet.";
    }
  }

  function tableRow(database, table) {
    const row = document.createElement("tr");
    const name = document.createElement("td");
    const link = document.createElement("a");
    link.href = `/${tildeEncode(database)}/${tildeEncode(table.name)}`;
    link.textContent = `${database} / ${table.name}`;
    const size = document.createElement("span");
    size.className = "hint";
    size.textContent = typeof table.count === "number" ? ` ${count(table.count, "row")}` : "";
    name.append(link, size);
    const actions = document.createElement("td");
    actions.className = "actions";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "danger";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete ${database} / ${table.name}`);
    remove.addEventListener("click", () => deleteTable(database, table.name, row, remove));
    actions.append(remove);
    row.append(name, actions);
    return row;
  }

  async function deleteTable(database, table, row, button) {
    if (!window.confirm(`Delete the table ${table} from ${database}? Its rows are gone for good.`)) {
      return;
    }
    button.disabled = true;
    tablesStatus.className = "";
    const response = await fetch("/-/upload/delete", {
      method: "POST",
      headers: { Accept: "application/json" },
      body: new URLSearchParams({ database, table }),
    });
    let answer = {};
    try {
      answer = await response.json();
    } catch (error) {
      answer = { message: `The table could not be deleted (HTTP ${response.status}).` };
    }
    if (response.ok) {
      row.remove();
      tablesStatus.textContent = `Deleted the table ${answer.table} from ${answer.database}.`;
    } else {
      button.disabled = false;
      tablesStatus.className = "error";
      tablesStatus.textContent = answer.message;
    }
  }

  // Datasette's tilde-encoding of a name in a URL (datasette.utils.tilde_encode).
  function tildeEncode(name) {
    let out = "";
    for (const byte of new TextEncoder().encode(name)) {
      const char = String.fromCharCode(byte);
      if (/[A-Za-z0-9_-]/.test(char)) {
        out += char;
      } else if (byte === 0x20) {
        out += "+";
      } else {
        out += `~${byte.toString(16).toUpperCase().padStart(2, "0")}`;
      }
    }
    return out;
  }

  loadTables();
});
