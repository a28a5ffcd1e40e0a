# echo_service.py
from dataclasses import dataclass
from flamepy import service


@dataclass
class EchoRequest:
    text: str


@dataclass
class EchoResponse:
    text: str
    count: int


ins = service.FlameInstance()


@ins.entrypoint
def echo(req: EchoRequest) -> EchoResponse:
    history = ins.context() or []
    history.append(req.text)
    ins.update_context(history)
    return EchoResponse(text=req.text.upper(), count=len(history))


if __name__ == "__main__":
    ins.run()
