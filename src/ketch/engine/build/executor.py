"""The build executor: runs a :class:`~ketch.image.build.plan.BuildPlan` into images.

Terms
-----
step
    One instruction of a needed stage (the global ARGs and each FROM count too, as in
    docker's ``Step 3/7 : ...``). Every step but FROM and the global ARGs makes an
    image: the parent's config with the step applied, one more history entry and,
    for RUN/COPY/ADD, one more layer. These step images are the *cache*: real,
    untagged images (``docker images -a`` shows them as intermediates), found again
    by :mod:`ketch.engine.build.cache` keys.
stage state
    The image a stage has reached (ID, config, layers) plus its variables
    (:class:`~ketch.image.build.plan.StageVars`). FROM starts it from a stage result,
    an image (pulled if missing and a registry answers) or ``scratch``.

Lifecycle of one build: extract the context (:mod:`.intake`: into a temp directory
under ``<data-root>/build/tmp``, every file hashed on the way), parse, plan, then run
the needed stages — each stage as an asyncio task that starts when the stages it needs
(FROM, COPY --from) are done, so independent stages build in parallel — and finally
tag the target's image. The temp directory goes in every case; a failed step leaves no
image and no container, only the cache of the steps before it.

Progress is docker's classic JSON stream (``{"stream": "Step 1/5 : FROM busybox\\n"}``,
``" ---> Using cache\\n"``, ``"Successfully built …"``), handed to ``emit`` dict by dict.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from ketch.engine.build import config as cfgmod
from ketch.engine.build.cache import BuildCache, step_key
from ketch.engine.build.contexts import ContextCache
from ketch.engine.build.files import (
    CopySpec,
    Layer,
    mounted_view,
    parse_chmod,
    workdir_layer,
    write_copy_layer,
)
from ketch.engine.build.intake import extract_context, forget
from ketch.engine.build.run import RunSpec, run_step
from ketch.engine.image_core import short_id
from ketch.errors import InvalidArgument, KetchError, NotFound
from ketch.image.build import instructions as ins
from ketch.image.build.context import BuildContext
from ketch.image.build.expand import expand_instruction
from ketch.image.build.parser import parse, parse_trigger
from ketch.image.build.plan import (
    PROXY_ARGS,
    BuildPlan,
    Stage,
    StageVars,
    plan,
    platform_args,
)
from ketch.image.store import host_platform
from ketch.image.unpack import unpack
from ketch.oci.descriptor import Descriptor

if TYPE_CHECKING:
    from ketch.content import ContentStore
    from ketch.engine.containers.service import ContainerService
    from ketch.engine.images import ImageService
    from ketch.snapshot import Snapshotter

__all__ = ["BuildOptions", "Builder", "Emit"]

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]
_DEFAULT_SHELL = ("/bin/sh", "-c")


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """``POST /build``'s query, typed (docker's names in the comments)."""

    tags: tuple[str, ...] = ()                    # t (several)
    dockerfile: str = "Dockerfile"                # dockerfile
    build_args: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
    no_cache: bool = False                        # nocache
    pull: bool = False                            # pull
    remove: bool = True                           # rm
    force_remove: bool = False                    # forcerm
    target: str | None = None                     # target
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    quiet: bool = False                           # q
    network_mode: str = "default"                 # networkmode
    platform: str | None = None                   # platform


@dataclass
class _State:
    """Where a stage is: its image (None: scratch so far) and its variables."""

    image_id: str | None
    config: dict[str, Any]
    layers: list[Descriptor]
    vars: StageVars
    cmd_set: bool = False

    @property
    def section(self) -> dict[str, Any]:
        return dict(self.config.get("config") or {})

    @property
    def shell(self) -> list[str]:
        return list(self.section.get("Shell") or _DEFAULT_SHELL)

    @property
    def diff_ids(self) -> list[str]:
        return list((self.config.get("rootfs") or {}).get("diff_ids") or [])


class _Failed(InvalidArgument):
    """A step failed; the message names it (already sent as the stream's error)."""


class Builder:
    """Runs builds against one engine's stores and container service."""

    def __init__(self, *, images: ImageService, containers: ContainerService | None,
                 content: ContentStore, snapshotter: Snapshotter, data_root: str) -> None:
        self.images = images
        self.containers = containers
        self.content = content
        self.snapshotter = snapshotter
        self.root = os.path.join(data_root, "build")
        self.tmp = os.path.join(self.root, "tmp")
        os.makedirs(self.tmp, 0o700, exist_ok=True)
        for stale in os.listdir(self.tmp):  # contexts of builds a dead daemon left
            shutil.rmtree(os.path.join(self.tmp, stale), ignore_errors=True)
        self.cache = BuildCache(self.root, self._exists)
        # kept client context trees (``ketch build``): they outlive builds and restarts
        self.contexts = ContextCache(os.path.join(self.root, "contexts"))

    def _exists(self, image_id: str) -> bool:
        try:
            self.images.store.get(image_id)
        except NotFound:
            return False
        return True

    # -- entry points ---------------------------------------------------------------------

    async def build(self, context: IO[bytes], opts: BuildOptions, emit: Emit) -> str:
        """``POST /build``: the context is a tar stream; returns the image ID.

        Errors before the first message (a broken context, a Dockerfile that does not
        parse) are raised; the caller turns later ones into the stream's error.
        """
        work = tempfile.mkdtemp(dir=self.tmp, prefix="ctx-")
        digests = self.cache.file_digests()
        try:
            ctx = await asyncio.to_thread(extract_context, context, work, digests)
            return await self.build_context(ctx, opts, emit)
        finally:
            forget(digests, work)
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def build_synced(self, key: str, context: IO[bytes], opts: BuildOptions,
                           emit: Emit) -> str:
        """``POST /build?ketchcontext=<key>``: ``context`` is a synced context tar (the
        manifest, then only the files the daemon lacked) applied to the tree kept for
        ``key`` (:mod:`.contexts`), which stays locked for the whole build and is kept
        after it. A file the tar lacks and the daemon does not hold is a Conflict (409),
        raised before the first message; otherwise as :meth:`build`."""
        async with self.contexts.sync(key, context, self.cache.file_digests()) as ctx:
            return await self.build_context(ctx, opts, emit)

    async def build_context(self, ctx: BuildContext, opts: BuildOptions, emit: Emit) -> str:
        """Build from a ready context (a directory); see the module doc."""
        text = await asyncio.to_thread(ctx.read_file, opts.dockerfile or "Dockerfile")
        df = parse(text)
        args = {k: v for k, v in opts.build_args.items() if v is not None}
        host = host_platform()
        p = plan(df, target=opts.target, build_args=args,
                 predefined=platform_args("linux", host.architecture, host.variant or ""))
        if opts.labels:
            p = _with_labels(p, opts.labels)
        return await _Run(self, ctx, df.instructions, p, opts, args, emit).run()

    # -- helpers the run uses -------------------------------------------------------------

    def base_image(self, ref: str, line: int, opts: BuildOptions,
                   say: Callable[[str], None], emit: Emit) -> tuple[str, dict[str, Any],
                                                                 list[Descriptor]]:
        """(ID, config, layers) of an image a FROM or COPY --from names; pulled if
        missing (or with ``--pull``). Errors name the line."""
        record = None
        with contextlib.suppress(NotFound):
            record = self.images.store.get(ref)
        if record is None or opts.pull:
            try:
                self.images.pull(ref, None, opts.platform, None, emit)
            except KetchError as e:
                if record is None:
                    raise InvalidArgument(
                        f"Dockerfile:{line}: pull access denied or no registry for {ref}: "
                        f"image {ref} is not here and could not be pulled: {e}") from None
                say(f"[Warning] --pull: could not pull {ref}, using the local image: {e}\n")
            record = self.images.store.get(ref)
        meta = self.images._meta_of(record)
        return record.id, dict(meta.config), list(meta.layers)

    def chain_of(self, image_id: str | None) -> str | None:
        """The image's top layer snapshot, unpacked if it is not yet (None: no layers)."""
        if image_id is None:
            return None
        return unpack(self.images.store.get(image_id), self.content, self.snapshotter)

    def commit(self, parent: _State, section: dict[str, Any], created_by: str,
               layer: tuple[Descriptor, str] | None) -> _State:
        """Store the step's image; the new state (same variables)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        config = dict(parent.config)
        config["config"] = section
        config["created"] = now
        entry: dict[str, Any] = {"created": now, "created_by": created_by}
        layers = list(parent.layers)
        diff_ids = parent.diff_ids
        if layer is None:
            entry["empty_layer"] = True
        else:
            layers.append(layer[0])
            diff_ids.append(layer[1])
        config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
        config["history"] = [*(parent.config.get("history") or []), entry]
        image_id = self.images._store(config, layers, None, "commit", parent.image_id)
        return dataclasses.replace(parent, image_id=image_id, config=config, layers=layers)

    def restore(self, parent: _State, image_id: str) -> _State:
        """The state a cached step left: its image, the parent's variables."""
        meta = self.images._meta_of(self.images.store.get(image_id))
        return dataclasses.replace(parent, image_id=image_id, config=dict(meta.config),
                                   layers=list(meta.layers))


def _with_labels(p: BuildPlan, labels: Mapping[str, str]) -> BuildPlan:
    """``--label``: a LABEL step at the end of the target stage, as dockerd adds it."""
    st = p.stages[p.target]
    last = st.instructions[-1].end_line if st.instructions else st.from_.end_line
    # single-quoted, so the step's expansion gives the values back literally
    pairs = tuple(ins.KeyValue(_literal(k), _literal(v)) for k, v in sorted(labels.items()))
    shown = " ".join(f"{p.key}={p.value}" for p in pairs)
    label = ins.Label(line=last, end_line=last, original=f"LABEL {shown}", pairs=pairs)
    stages = list(p.stages)
    stages[p.target] = dataclasses.replace(st, instructions=(*st.instructions, label))
    return dataclasses.replace(p, stages=tuple(stages))


def _literal(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _key_of(instr: ins.Instruction) -> str:
    return repr(dataclasses.replace(instr, line=0, end_line=0))


class _Run:
    """One build in progress (see the module doc); ``run()`` returns the image ID."""

    def __init__(self, b: Builder, ctx: BuildContext, instructions: tuple[ins.Instruction, ...],
                 p: BuildPlan, opts: BuildOptions, args: dict[str, str], emit: Emit) -> None:
        self.b, self.ctx, self.plan, self.opts, self.args = b, ctx, p, opts, args
        self.emit = emit
        self.meta = [i for i in instructions if isinstance(i, ins.Arg)
                     and i.line < p.stages[0].from_.line]
        self.total = len(self.meta) + sum(1 + len(p.stages[i].instructions) for i in p.needed)
        self.first_step: dict[int, int] = {}
        n = len(self.meta) + 1
        for i in p.needed:
            self.first_step[i] = n
            n += 1 + len(p.stages[i].instructions)
        self.results: dict[int, asyncio.Future[_State]] = {}

    def say(self, text: str) -> None:
        if not self.opts.quiet:
            self.emit({"stream": text})

    def step(self, n: int, instr: ins.Instruction) -> None:
        self.say(f"Step {n}/{self.total} : {instr.original}\n")

    async def run(self) -> str:
        for n, a in enumerate(self.meta, 1):
            self.step(n, a)
        loop = asyncio.get_running_loop()
        for i in self.plan.needed:
            self.results[i] = loop.create_future()
        tasks = [loop.create_task(self.stage(self.plan.stages[i])) for i in self.plan.needed]
        try:
            final = await self.results[self.plan.target]
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        if final.image_id is None:
            raise InvalidArgument("No image was generated. Is your Dockerfile empty?")
        if self.plan.unused_build_args:
            self.say("[Warning] One or more build-args "
                     f"[{' '.join(self.plan.unused_build_args)}] were not consumed\n")
        image_id = final.image_id
        self.emit({"aux": {"ID": image_id}})
        if self.opts.quiet:
            self.emit({"stream": image_id + "\n"})
        self.say(f"Successfully built {short_id(image_id)}\n")
        for name in self.opts.tags:
            repo, tag = _split_tag(name)
            await asyncio.to_thread(self.b.images.tag, image_id, repo, tag)
            self.say(f"Successfully tagged {name if tag else name + ':latest'}\n")
        return image_id

    async def stage(self, st: Stage) -> None:
        fut = self.results[st.index]
        try:
            for d in st.deps:
                await asyncio.shield(self.results[d])
            state = await self.from_step(st)
            for k, instr in enumerate(st.instructions, 1):
                self.step(self.first_step[st.index] + k, instr)
                state = await self.instruction(state, instr)
            fut.set_result(state)
        except BaseException as e:
            if not fut.done():
                fut.set_exception(e)
            raise

    async def from_step(self, st: Stage) -> _State:
        self.step(self.first_step[st.index], st.from_)
        if st.base_stage is not None:
            base = await asyncio.shield(self.results[st.base_stage])
            state = dataclasses.replace(base, vars=StageVars.start(
                base.section.get("Env") or [], self.plan, self.args), cmd_set=False)
        elif st.scratch:
            host = host_platform()
            plat = {"architecture": host.architecture, "os": "linux"}
            state = _State(None, cfgmod.scratch_config(plat), [],
                           StageVars.start([], self.plan, self.args))
        else:
            image_id, config, layers = await asyncio.to_thread(
                self.b.base_image, st.base, st.from_.line, self.opts, self.say, self.emit)
            state = _State(image_id, config, layers, StageVars.start(
                (config.get("config") or {}).get("Env") or [], self.plan, self.args))
        self.say(f" ---> {short_id(state.image_id) if state.image_id else ''}\n")
        triggers = list(state.section.get("OnBuild") or [])
        if triggers:  # run once, in this child only: its images do not inherit them
            state.config = {**state.config, "config": {**state.section, "OnBuild": None}}
            self.say(f"# Executing {len(triggers)} build trigger"
                     f"{'s' if len(triggers) > 1 else ''}\n")
            for text in triggers:
                trig = parse_trigger(text, line=st.from_.line, escape=self.plan.escape)
                trig = dataclasses.replace(trig, line=st.from_.line, end_line=st.from_.line)
                state = await self.instruction(state, trig)
        return state

    async def instruction(self, state: _State, raw: ins.Instruction) -> _State:
        try:
            return await self._instruction(state, raw)
        except RuntimeError as e:  # never expected: keep the step in the message
            raise InvalidArgument(f"Dockerfile:{raw.line}: {raw.keyword}: {e}") from e
        except KetchError as e:
            text = str(e)
            if text.startswith(("Dockerfile:", "dockerfile parse error")):
                raise
            where = f"Dockerfile:{raw.line}: {raw.keyword} failed: {text}"
            try:
                restated = type(e)(where)
            except TypeError:  # an error class with its own arguments
                restated = InvalidArgument(where)
            raise restated from e

    async def _instruction(self, state: _State, raw: ins.Instruction) -> _State:
        env = state.vars.expansion_env()
        instr = expand_instruction(raw, env, self.plan.escape)
        section = state.section
        parent_key = state.image_id or "scratch"
        match instr:
            case ins.Arg():
                state = dataclasses.replace(state, vars=functools.reduce(
                    StageVars.declare, instr.args, state.vars))
                values = [(n, v) for n, v in state.vars.args]
                key = step_key(parent_key, _key_of(instr), values)
                text = "ARG " + " ".join(
                    d.name if d.default is None else f"{d.name}={d.default}" for d in instr.args)
                created = cfgmod.nop_created_by(state.shell, text)
                return await self.cached(state, key, lambda: self.b.commit(
                    state, section, created, None))
            case ins.Env():
                state = dataclasses.replace(state, vars=state.vars.set_env(instr.pairs))
                new, created = cfgmod.apply_metadata(section, instr, shell=state.shell,
                                                     image_env=state.vars.image_env())
                key = step_key(parent_key, _key_of(instr))
                return await self.cached(state, key, lambda: self.b.commit(
                    state, new, created, None))
            case ins.Maintainer():
                key = step_key(parent_key, _key_of(instr))

                def maint() -> _State:
                    s = dataclasses.replace(state, config={**state.config,
                                                           "author": instr.author})
                    return self.b.commit(s, section, cfgmod.nop_created_by(
                        state.shell, f"MAINTAINER {instr.author}"), None)
                return await self.cached(state, key, maint)
            case ins.Run():
                return await self.run_instruction(state, instr, section)
            case ins.Copy() | ins.Add():
                return await self.copy_instruction(state, instr, section)
            case _:
                new, created = cfgmod.apply_metadata(
                    section, instr, shell=state.shell, image_env=state.vars.image_env(),
                    cmd_set=state.cmd_set)
                if isinstance(instr, ins.Cmd):
                    state = dataclasses.replace(state, cmd_set=True)
                key = step_key(parent_key, _key_of(instr))
                if isinstance(instr, ins.Workdir):  # makes the directory if missing
                    line = instr.line
                    return await self.cached(state, key, lambda: self.workdir(
                        state, new, created, line))
                return await self.cached(state, key, lambda: self.b.commit(
                    state, new, created, None))

    def workdir(self, state: _State, section: dict[str, Any], created: str,
                line: int) -> _State:
        """WORKDIR's step: its directory as a layer when the parent lacks it."""
        layer = workdir_layer(self.b.content, self.b.snapshotter,
                              self.b.chain_of(state.image_id), state.diff_ids, self.ctx,
                              section["WorkingDir"], line)
        return self.b.commit(state, section, created,
                             None if layer is None else (layer.descriptor, layer.diff_id))

    async def cached(self, state: _State, key: str, make: Callable[[], _State]) -> _State:
        """A metadata step: reuse the cached image or make it (cheap, in a thread)."""
        if not self.opts.no_cache:
            hit = await asyncio.to_thread(self.b.cache.get, key)
            if hit is not None:
                self.say(" ---> Using cache\n")
                out = await asyncio.to_thread(self.b.restore, state, hit)
                self.say(f" ---> {short_id(hit)}\n")
                return out
        out = await asyncio.to_thread(make)
        assert out.image_id is not None
        await asyncio.to_thread(self.b.cache.put, key, out.image_id)
        self.say(f" ---> {short_id(out.image_id)}\n")
        return out

    async def try_cache(self, state: _State, key: str) -> _State | None:
        if self.opts.no_cache:
            return None
        hit = await asyncio.to_thread(self.b.cache.get, key)
        if hit is None:
            return None
        self.say(" ---> Using cache\n")
        self.say(f" ---> {short_id(hit)}\n")
        return await asyncio.to_thread(self.b.restore, state, hit)

    async def run_instruction(self, state: _State, instr: ins.Run,
                              section: dict[str, Any]) -> _State:
        svc = self.b.containers
        if svc is None:
            raise InvalidArgument("RUN needs containers, and this daemon cannot start them")
        if state.image_id is None:
            raise InvalidArgument("RUN on an empty (scratch) image: there is nothing to run")
        shell = state.shell
        script = instr.shebang_script()
        if script is not None:
            argv = [*shell, _shebang_command(script.body())]
        else:
            argv = instr.shell_argv(shell)
        env = state.vars.run_env()
        arg_env = [f"{k}={v}" for k, v in state.vars.args if v is not None
                   and k not in {e.partition("=")[0] for e in state.vars.image_env()}]
        shown = " ".join(argv)
        created = f"|{len(arg_env)} {' '.join(arg_env)} {shown}" if arg_env else shown
        # docker: the predefined proxy ARGs are exempt from the cache (and the history)
        # unless the Dockerfile declares them
        declared = {k for k, _ in state.vars.args}
        key_env = [e for e in env if e.partition("=")[0] not in PROXY_ARGS
                   or e.partition("=")[0] in declared]
        key = step_key(state.image_id, "RUN", argv, key_env, instr.network)
        hit = await self.try_cache(state, key)
        if hit is not None:
            return hit
        network = instr.network if instr.network and instr.network != "default" \
            else self.opts.network_mode
        spec = RunSpec(state.image_id, tuple(argv), tuple(env),
                       section.get("WorkingDir") or "", section.get("User") or "",
                       network)
        _, blob = await run_step(svc, spec, self.say,
                                 remove=self.opts.remove or self.opts.force_remove)
        out = await asyncio.to_thread(self.b.commit, state, section, created,
                                      (blob.descriptor, blob.diff_id))
        assert out.image_id is not None
        await asyncio.to_thread(self.b.cache.put, key, out.image_id)
        self.say(f" ---> {short_id(out.image_id)}\n")
        return out

    async def copy_instruction(self, state: _State, instr: ins.Copy | ins.Add,
                               section: dict[str, Any]) -> _State:
        kw = instr.keyword
        if isinstance(instr, ins.Add) and any("://" in s for s in instr.sources):
            raise InvalidArgument("ADD from a URL is not supported by this builder; "
                                  "download it in a RUN step or a stage")
        chmod = parse_chmod(instr.chmod, instr.line, kw)
        from_ = instr.from_ if isinstance(instr, ins.Copy) else None
        workdir = section.get("WorkingDir") or "/"
        inline = tuple((h.name, h.body()) for h in instr.inline)
        with contextlib.ExitStack() as stack:
            if from_ is None:
                ctx = self.ctx
                srcs = await asyncio.to_thread(ctx.resolve, instr.sources, line=instr.line,
                                               keyword=kw, dest=instr.dest) \
                    if instr.sources else ()
                digest = await asyncio.to_thread(self.ctx.digest, srcs,
                                                 cache=self.b.cache.file_digests())
                origin = "context"
            else:
                source = await self.source_image(from_, instr.line)
                origin = source or "scratch"
                chain = await asyncio.to_thread(self.b.chain_of, source)
                root = stack.enter_context(mounted_view(self.b.snapshotter, chain))
                ctx = BuildContext(root)
                srcs = await asyncio.to_thread(ctx.resolve, instr.sources, line=instr.line,
                                               keyword=kw, dest=instr.dest)
                digest = origin
            key = step_key(state.image_id or "scratch", _key_of(instr), origin, digest)
            hit = await self.try_cache(state, key)
            if hit is not None:
                return hit
            spec = CopySpec(ctx, tuple(srcs), instr.dest, workdir, inline, instr.chown, chmod,
                            isinstance(instr, ins.Add), kw, instr.line)
            parent_chain = await asyncio.to_thread(self.b.chain_of, state.image_id)
            layer: Layer = await asyncio.to_thread(
                write_copy_layer, self.b.content, self.b.snapshotter, parent_chain,
                state.diff_ids, spec)
        kind = "dir" if any(s.is_dir for s in srcs) else "file"
        created = cfgmod.nop_created_by(
            state.shell, f"{kw} {kind}:{digest.removeprefix('sha256:')} in {instr.dest} ",
            two_spaces=False)
        out = await asyncio.to_thread(self.b.commit, state, section, created,
                                      (layer.descriptor, layer.diff_id))
        assert out.image_id is not None
        await asyncio.to_thread(self.b.cache.put, key, out.image_id)
        self.say(f" ---> {short_id(out.image_id)}\n")
        return out

    async def source_image(self, ref: str, line: int) -> str | None:
        """The image ID of a COPY --from: a stage's result or an image (pulled if need be)."""
        for c in (c for i in self.plan.needed for c in self.plan.stages[i].copy_from):
            if c.line == line and c.ref == ref and c.stage is not None:
                return (await asyncio.shield(self.results[c.stage])).image_id
        image_id, _, _ = await asyncio.to_thread(self.b.base_image, ref, line, self.opts,
                                                 self.say, self.emit)
        return image_id


def _shebang_command(body: str) -> str:
    """``RUN <<EOF`` with ``#!``: write the script to a temp file and run it."""
    quoted = body.replace("'", "'\\''")
    return (f"f=$(mktemp) && printf '%s' '{quoted}' > \"$f\" && chmod 0755 \"$f\" && "
            "\"$f\"; s=$?; rm -f \"$f\"; exit $s")


def _split_tag(name: str) -> tuple[str, str | None]:
    """``repo[:tag]`` → (repo, tag or None); a ``:`` in a registry host is not a tag."""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:]
    return name, None

