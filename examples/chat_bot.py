"""A chat bot on the public API: python examples/chat_bot.py [ENDPOINT]; answers !time."""

import asyncio
import sys
import time

import wirecat
from wirecat.protocols.chat import Message


async def main(endpoint: str) -> None:
    async with wirecat.ChatClient.connect(endpoint, nick="timebot") as chat:
        await chat.join("#lobby")
        print(f"timebot in #lobby at {endpoint}", flush=True)
        async for event in chat:  # messages, joins, parts, DMs... until the server closes
            if isinstance(event, Message) and event.text.strip() == "!time":
                await chat.say(time.strftime("%H:%M:%S UTC", time.gmtime()), room=event.room)


asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7070"))
