# client.py
from echo_service import EchoRequest
from flamepy.service import Session


with Session("echo-app", ctx=[]) as session:
    response = session.invoke(EchoRequest("hello"))
    print(response.text)
    print(response.count)
    print(session.id())
