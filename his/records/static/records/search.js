// Fill the ICD-10 and drug datalists as the doctor types, from the records search endpoints.
document.querySelectorAll("input[data-search]").forEach((input) => {
  const list = document.getElementById(input.getAttribute("list"));
  let timer = null;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    const query = input.value.trim();
    if (query.length < 2) return;
    timer = setTimeout(async () => {
      const response = await fetch(`${input.dataset.search}?q=${encodeURIComponent(query)}`, { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const items = await response.json();
      list.replaceChildren(...items.map((item) => {
        const option = document.createElement("option");
        option.value = item.code;
        option.label = item.vi || item.name;
        return option;
      }));
    }, 150);
  });
});
