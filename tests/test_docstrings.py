"""Every public function and class of the library has a docstring (the brief's standard: "public
functions have short docstrings with shapes"), and so does every public method of its classes."""
import importlib
import inspect
import pkgutil

import jaxgen

def _modules():
  names = ["jaxgen"] + [m.name for m in pkgutil.walk_packages(jaxgen.__path__, "jaxgen.")]
  return [importlib.import_module(n) for n in sorted(names)
          if not any(part.startswith("_") for part in n.split("."))]


def _public_members(module):
  for name, obj in vars(module).items():
    if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
      continue
    if inspect.isfunction(obj) or inspect.isclass(obj):
      yield f"{module.__name__}.{name}", obj


def test_public_functions_classes_and_methods_have_docstrings():
  missing = []
  for module in _modules():
    if not (module.__doc__ or "").strip():
      missing.append(module.__name__ + " (module)")
    for qualname, obj in _public_members(module):
      if not (inspect.getdoc(obj) or "").strip():
        missing.append(qualname)
      if inspect.isclass(obj):
        for name, member in vars(obj).items():
          if (name.startswith("_") or not inspect.isfunction(member)
              or name in getattr(obj, "__dataclass_fields__", {})):  # a field's default value
            continue
          if not (member.__doc__ or "").strip() and not _inherits_doc(obj, name):
            missing.append(f"{qualname}.{name}")
  assert not missing, f"{len(missing)} public names without a docstring: {missing}"


def _inherits_doc(cls, name):
  """An override documented by the method it overrides (e.g. flax's ``__call__``, ``setup``)."""
  return any((getattr(getattr(base, name, None), "__doc__", None) or "").strip()
             for base in cls.__mro__[1:])
