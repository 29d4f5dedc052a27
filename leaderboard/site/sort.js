// Sort a table by the column whose heading is clicked (again: the other way). Without JavaScript the
// tables stay in their rank order, readable as they are.
// A missing value (an empty data-value) counts as the lowest, so that it sorts last from the top.
function number(text) { return text === "" ? -Infinity : parseFloat(text); }
function compare(p, q) { return (p > q) - (p < q); }

document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (heading, column) {
    heading.tabIndex = 0;
    function sort() {
      var numeric = heading.dataset.type === "number";
      var descending = heading.getAttribute("aria-sort") !== "descending" && numeric
        || heading.getAttribute("aria-sort") === "ascending";
      var rows = Array.prototype.slice.call(table.tBodies[0].rows);
      rows.sort(function (a, b) {
        var x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
        var order = numeric ? compare(number(x), number(y)) : x.localeCompare(y);
        return descending ? -order : order;
      });
      table.querySelectorAll("thead th").forEach(function (other) { other.removeAttribute("aria-sort"); });
      heading.setAttribute("aria-sort", descending ? "descending" : "ascending");
      rows.forEach(function (row) { table.tBodies[0].appendChild(row); });
    }
    heading.addEventListener("click", sort);
    heading.addEventListener("keydown", function (event) { if (event.key === "Enter") { sort(); } });
  });
});
