/* idbroker: WebAuthn on the step-up and enrolment pages. Vanilla JS, no framework.
 *
 * A button with data-webauthn="create" (register) or "get" (step-up) and:
 *   data-options-url   POST here (JSON {}) for {"handle": ..., "publicKey": {...}}
 *   data-complete-url  POST here {"handle", "credential", "name"}; answers {"redirect": url}
 *                      or {"message": text} when refused
 *   data-csrf          sent as the X-CSRF-Token header
 *   data-name-input    (create) id of the input holding the authenticator's name
 *   data-status        id of the element (role="status"/"alert") that shows messages
 *   data-msg-cancelled, data-msg-unsupported, data-msg-failed   the page's own texts (nl/en)
 * The browser's JSON helpers (parse*OptionsFromJSON, credential.toJSON) do all base64url
 * work. A cancelled or failed prompt is reported to the server too, so that the
 * challenge is used up, and the button can be pressed again for a fresh one.
 */
(function () {
  "use strict";

  function supported() {
    return typeof window.PublicKeyCredential === "function" &&
      typeof PublicKeyCredential.parseCreationOptionsFromJSON === "function" &&
      typeof PublicKeyCredential.parseRequestOptionsFromJSON === "function";
  }

  function show(button, text, isError) {
    var box = document.getElementById(button.dataset.status || "");
    if (!box) { return; }
    box.textContent = text || "";
    box.setAttribute("role", isError ? "alert" : "status");
    box.hidden = !text;
  }

  function post(button, url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": button.dataset.csrf || ""},
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        data.ok = response.ok;
        return data;
      });
    });
  }

  function run(button) {
    var create = button.dataset.webauthn === "create";
    var handle = null;
    button.disabled = true;
    show(button, "", false);
    post(button, button.dataset.optionsUrl, {}).then(function (data) {
      if (!data.ok || !data.publicKey || !data.handle) {
        throw {serverMessage: data.message || button.dataset.msgFailed};
      }
      handle = data.handle;
      if (create) {
        return navigator.credentials.create({
          publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(data.publicKey)
        });
      }
      return navigator.credentials.get({
        publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(data.publicKey)
      });
    }).then(function (credential) {
      var nameInput = document.getElementById(button.dataset.nameInput || "");
      return post(button, button.dataset.completeUrl, {
        handle: handle,
        credential: credential.toJSON(),
        name: nameInput ? nameInput.value : ""
      });
    }, function (error) {
      if (error && error.serverMessage !== undefined) { throw error; }
      // The prompt failed in the browser: tell the server (it uses up the challenge) and
      // show the page's own text; NotAllowedError is a cancel or a time-out.
      var name = (error && error.name) || "Error";
      var text = name === "NotAllowedError" || name === "AbortError"
        ? button.dataset.msgCancelled : button.dataset.msgFailed;
      var report = handle === null ? Promise.resolve({}) :
        post(button, button.dataset.completeUrl, {handle: handle, credential: {error: name}});
      return report.then(function (data) {
        throw {serverMessage: data.message || text};
      });
    }).then(function (result) {
      if (result.ok && result.redirect) {
        window.location.assign(result.redirect);
        return;
      }
      throw {serverMessage: result.message || button.dataset.msgFailed};
    }).catch(function (error) {
      var text = error && error.serverMessage !== undefined ? error.serverMessage : button.dataset.msgFailed;
      show(button, text, true);
      button.disabled = false;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var buttons = document.querySelectorAll("[data-webauthn]");
    Array.prototype.forEach.call(buttons, function (button) {
      if (!supported()) {
        button.disabled = true;
        show(button, button.dataset.msgUnsupported, true);
        return;
      }
      button.addEventListener("click", function (event) {
        event.preventDefault();
        run(button);
      });
    });
  });
}());
