"""Serve the model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions).

Needs the `serve` extra (`pip install -e ".[serve]"`: Starlette, uvicorn, Jinja2).
The model loads once; requests are queued and served by one worker thread that
interleaves up to --parallel generations token by token. See docs/serving.md.
"""


from ..cli import add_model_argument, load_model
from ..errors import CogcoreError


def add_arguments(p):
    add_model_argument(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--model-name", default=None, metavar="NAME",
                   help="the model id clients ask for (default: the model directory's name)")
    p.add_argument("--parallel", type=int, default=8, metavar="N",
                   help="generations interleaved at once (default 8); more requests wait in the queue")
    p.add_argument("--queue-size", type=int, default=64, metavar="N",
                   help="requests that may wait; more are answered 503 (default 64)")
    p.add_argument("--prompt-cache-bytes", type=int, default=2**30, metavar="BYTES",
                   help="memory for the prompt cache that lets requests sharing a prefix (a system prompt) "
                        "skip recomputing it (default 1 GiB; 0 = no prompt cache)")
    p.add_argument("--prompt-cache", metavar="DIR", default=None,
                   help="keep the prompt cache in this directory too (kept across restarts)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="a request still unfinished this long after it arrived is ended with 504 (default 600)")


def run(args):
    try:
        import uvicorn
        from ..server import create_app
    except ImportError as e:
        raise CogcoreError(f"cogcore serve needs the serve extra ({e.name} is missing): "
                           f"pip install 'cogcore[serve]'") from None
    model = load_model(args)
    app = create_app(model, model_id=args.model_name, prompt_cache=open_prompt_cache(args, model),
                     max_queue=args.queue_size, max_active=args.parallel, timeout=args.timeout)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def open_prompt_cache(args, model):
    """The server's PromptCache, or None when turned off (--prompt-cache-bytes 0)."""
    import cogcore
    if args.prompt_cache_bytes == 0:
        return None
    return cogcore.PromptCache(model, max_bytes=args.prompt_cache_bytes, directory=args.prompt_cache)
