"""The shape of the house, read from every module's imports.

The core (`rosetta`) knows no application; `translation` and `retrieval`
never import each other; product code imports neither `benchmarks` nor
`tools`; no module imports itself back through others (imports inside
functions count: hiding a cycle there does not remove it); no module reaches
for another module's `_private` names; no script edits `sys.path`.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ('rosetta', 'translation', 'retrieval', 'benchmarks', 'tools')
PRODUCT = ('rosetta', 'translation', 'retrieval')
APPLICATIONS = ('translation', 'retrieval')


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _modules() -> dict[str, pathlib.Path]:
  found = {}
  for package in PACKAGES:
    for path in sorted((REPO / package).rglob('*.py')):
      if '__pycache__' not in path.parts:
        found[_module_name(path)] = path
  return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
  """The longest known module that `name` (a dotted import) refers to."""
  while name:
    if name in MODULES:
      return name
    name = name.rpartition('.')[0]
  return None


def _is_package(module: str) -> bool:
  return MODULES[module].name == '__init__.py'


class _Imports(ast.NodeVisitor):
  """Edges to known modules, private names taken, `sys.path` edits."""

  def __init__(self, module: str):
    self.module = module
    self.edges: set[str] = set()
    self.private: list[str] = []
    self.sys_path_edits = 0
    self.aliases: dict[str, str] = {}  # local name -> module

  def _add(self, target: str | None, alias: str | None = None):
    if target is not None and target != self.module:
      self.edges.add(target)
      if alias:
        self.aliases[alias] = target

  def visit_Import(self, node):
    for a in node.names:
      target = _resolve(a.name)
      self._add(target, a.asname)

  def visit_ImportFrom(self, node):
    if node.level:  # relative imports are not used in this codebase
      base = self.module.split('.')
      if not _is_package(self.module):
        base = base[:-1]
      base = base[:len(base) - node.level + 1]
      modname = '.'.join(base + ([node.module] if node.module else []))
    else:
      modname = node.module or ''
    for a in node.names:
      full = f'{modname}.{a.name}'
      if full in MODULES:  # `from pkg import module`
        self._add(full, a.asname or a.name)
      else:
        target = _resolve(modname)
        self._add(target)
        if target is not None and a.name.startswith('_'):
          self.private.append(f'{target}.{a.name}')

  def visit_Attribute(self, node):
    # `module._private` through an imported module's local name.
    if (isinstance(node.value, ast.Name) and node.attr.startswith('_')
        and not node.attr.startswith('__')
        and node.value.id in self.aliases):
      self.private.append(f'{self.aliases[node.value.id]}.{node.attr}')
    self.generic_visit(node)

  def visit_Call(self, node):
    f = node.func
    if (isinstance(f, ast.Attribute) and f.attr in ('insert', 'append',
                                                     'extend')
        and isinstance(f.value, ast.Attribute) and f.value.attr == 'path'
        and isinstance(f.value.value, ast.Name)
        and f.value.value.id == 'sys'):
      self.sys_path_edits += 1
    self.generic_visit(node)


def _scan():
  result = {}
  for module, path in MODULES.items():
    visitor = _Imports(module)
    visitor.visit(ast.parse(path.read_text(), filename=str(path)))
    result[module] = visitor
  return result


SCAN = _scan()


def _top(module: str) -> str:
  return module.split('.')[0]


def test_the_scan_sees_the_codebase():
  # Guards the test itself: a broken walk would make every check vacuous.
  assert len(MODULES) > 80
  assert 'rosetta.model.encoder_decoder' in SCAN['rosetta.model.'
                                                  'encoder_decoder_model'
                                                  ].edges


def test_core_imports_no_application():
  bad = [f'{m} -> {t}' for m, v in SCAN.items() if _top(m) == 'rosetta'
         for t in v.edges if _top(t) != 'rosetta']
  assert not bad, bad


def test_applications_do_not_import_each_other():
  bad = [f'{m} -> {t}' for m, v in SCAN.items() if _top(m) in APPLICATIONS
         for t in v.edges
         if _top(t) in APPLICATIONS and _top(t) != _top(m)]
  assert not bad, bad


def test_product_imports_no_benchmark_or_tool():
  bad = [f'{m} -> {t}' for m, v in SCAN.items() if _top(m) in PRODUCT
         for t in v.edges if _top(t) in ('benchmarks', 'tools')]
  assert not bad, bad


def test_no_private_names_across_modules():
  bad = [f'{m} uses {name}' for m, v in SCAN.items() for name in v.private]
  assert not bad, bad


def test_no_sys_path_edits():
  bad = [m for m, v in SCAN.items() if v.sys_path_edits]
  assert not bad, bad


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def _graph():
  # A package's __init__ is not a real dependency of its modules here:
  # importing `pkg.mod` runs `pkg/__init__.py`, which imports nothing.
  return {m: {t for t in v.edges if not _is_package(t)}
          for m, v in SCAN.items()}


def test_no_import_cycles():
  assert not _cycles(_graph())


def test_cycle_finder_finds_a_cycle():
  assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [
      ['a', 'b', 'c']]


@pytest.mark.parametrize('package', [p for p in MODULES
                                     if _is_package(p)])
def test_package_inits_import_nothing(package):
  # Package __init__ files stay empty of imports so that importing one
  # module never drags its siblings in (and the graph above stays honest).
  assert not SCAN[package].edges, (package, SCAN[package].edges)


def test_every_directory_of_modules_is_a_package():
  for package in PACKAGES:
    for path in (REPO / package).rglob('*.py'):
      if '__pycache__' in path.parts:
        continue
      assert (path.parent / '__init__.py').exists(), path
