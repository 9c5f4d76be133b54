// Server text shown on the page: spans between backticks (commands, flags, paths) become <code> elements. Built
// with DOM nodes and textContent only, so nothing the server sends is ever parsed as HTML.

/** Fill `el` with `text`, each `backticked` span as a <code>; an unpaired backtick is kept as it is. */
export function setTextWithCode(el, text) {
  const parts = String(text).split('`');
  if (parts.length % 2 === 0) {
    // an odd number of backticks: the last one opens nothing, so it stays part of the text
    parts[parts.length - 2] += `\`${parts.pop()}`;
  }
  const nodes = parts.map((part, i) => {
    if (i % 2 === 0) return document.createTextNode(part);
    const code = document.createElement('code');
    code.textContent = part;
    return code;
  });
  el.replaceChildren(...nodes);
}
