// Starts Swagger UI on /docs from a file, not an inline script: the Content-Security-Policy allows no inline script.
"use strict";

window.addEventListener("DOMContentLoaded", () => {
  const container = document.getElementById("swagger-ui-container");
  window.ui = SwaggerUIBundle({ url: container.dataset.specUrl, dom_id: "#swagger-ui-container" });
});
