#!/usr/bin/env python3
"""A CAME-style gate controller on Modbus TCP, served by pymodbus, for integration tests.

It is an independent peer: the Rust client is checked against somebody else's Modbus
stack rather than against our own simulator. The register map follows
config/profiles/came-zlb30.toml (0-based protocol addresses):

    100 status   (16 open, 17 closed, 19 stopped, 32 opening, 33 closing)
    101 position (0-100 %)
    102 safety inputs (bit 0 photocell), 103 fault code
    104-105 operation counter, 32 bits, low word first
    200 command  (1 open, 2 close, 3 stop, 4 reset), 201 warning output

With `--off-map-unit U`, unit U reports what its map does not name: status code 99 and a
position of 150 (the map's maximum is 100).

With `--clear-command` the board behaves like controllers that clear the command register
the moment they take a command: register 200 reads 0 right after the write, and the write
is answered with that content (0) instead of an echo of the value written.

Every write is reported on stdout as `WRITE unit=U register=R value=V`, and `READY` is
printed once the listener accepts connections, so that a test can synchronise on both.

Needs pymodbus 3.16.1 (`pip install pymodbus==3.16.1`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys

try:
    from pymodbus.constants import ExcCodes
    from pymodbus.server import StartAsyncTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice
except ImportError as exc:  # the test reads stderr and tells the user what to install
    print(
        f"pymodbus is missing or too old ({exc}); run: pip install pymodbus==3.16.1",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(3)

STATUS, POSITION, SAFETY, FAULT, COUNTER_LO, COUNTER_HI = 100, 101, 102, 103, 104, 105
COMMAND, WARN = 200, 201

OPEN, CLOSED, PARTLY_OPEN, STOPPED, OPENING, CLOSING = 16, 17, 18, 19, 32, 33

FC_WRITE_SINGLE_REGISTER = 6
FC_WRITE_MULTIPLE_REGISTERS = 16


class Gate:
    """One unit's motion: the status, position and counter registers it owns."""

    def __init__(self, unit: int, travel_s: float, counter_start: int, clear_command: bool) -> None:
        self.unit = unit
        self.clear_command = clear_command
        self.travel_s = travel_s
        self.counter_start = counter_start
        self.motion: asyncio.Task | None = None

    def initial_values(self, off_map: bool = False) -> list[int]:
        """The status block at start: closed, fully shut, the counter at its start value (or,
        off the map, a status code and a position the map does not have)."""
        lo = self.counter_start & 0xFFFF
        hi = (self.counter_start >> 16) & 0xFFFF
        if off_map:
            return [99, 150, 0, 0, lo, hi]
        return [CLOSED, 0, 0, 0, lo, hi]

    async def action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        # pymodbus also calls the hook for reads and for the read-back that follows every
        # write (set_values is None then); only real writes move the gate. pymodbus answers
        # a single write with what that read-back finds, so clearing the command register
        # there is what makes the answer carry 0.
        if set_values is None:
            if (
                self.clear_command
                and function_code == FC_WRITE_SINGLE_REGISTER
                and address == COMMAND
            ):
                registers[COMMAND - start_address] = 0
            return None
        if function_code not in (FC_WRITE_SINGLE_REGISTER, FC_WRITE_MULTIPLE_REGISTERS):
            return None
        for i, value in enumerate(set_values):
            register = address + i
            print(f"WRITE unit={self.unit} register={register} value={int(value)}", flush=True)
            if register == COMMAND:
                refused = self.command(int(value), start_address, registers)
                if refused is not None:
                    return refused
        return None

    def command(self, value: int, base: int, registers: list[int]) -> ExcCodes | None:
        def at(register: int) -> int:
            return registers[register - base]

        def put(register: int, value: int) -> None:
            registers[register - base] = value

        if value == 1:
            if at(STATUS) != OPEN:
                self.move(OPENING, OPEN, 100, base, registers)
        elif value == 2:
            if at(STATUS) != CLOSED:
                self.move(CLOSING, CLOSED, 0, base, registers)
        elif value == 3:
            self.halt()
            if at(STATUS) in (OPENING, CLOSING):
                put(STATUS, STOPPED)
        elif value == 4:
            put(FAULT, 0)
        else:
            return ExcCodes.ILLEGAL_VALUE
        return None

    def halt(self) -> None:
        if self.motion is not None and not self.motion.done():
            self.motion.cancel()
        self.motion = None

    def move(self, moving: int, end: int, position: int, base: int, registers: list[int]) -> None:
        self.halt()
        registers[STATUS - base] = moving
        self.motion = asyncio.get_running_loop().create_task(
            self.arrive(end, position, base, registers)
        )

    async def arrive(self, end: int, position: int, base: int, registers: list[int]) -> None:
        await asyncio.sleep(self.travel_s)
        # The same list pymodbus serves from: changing it in place is what a read sees next.
        registers[STATUS - base] = end
        registers[POSITION - base] = position
        if end == OPEN:
            counter = (registers[COUNTER_LO - base] | registers[COUNTER_HI - base] << 16) + 1
            counter &= 0xFFFF_FFFF
            registers[COUNTER_LO - base] = counter & 0xFFFF
            registers[COUNTER_HI - base] = counter >> 16


def device(gate: Gate, off_map: bool = False) -> SimDevice:
    return SimDevice(
        id=gate.unit,
        simdata=[
            SimData(
                address=STATUS,
                count=1,
                values=gate.initial_values(off_map),
                datatype=DataType.REGISTERS,
            ),
            SimData(address=COMMAND, count=1, values=[0, 0], datatype=DataType.REGISTERS),
        ],
        action=functools.partial(Gate.action, gate),
    )


async def wait_listening(host: str, port: int, server: asyncio.Task) -> None:
    """Waits until the port accepts a connection; the server API has no 'listening' signal."""
    while True:
        if server.done():
            # Re-raises the server's own error (address in use, bad device map).
            server.result()
            raise RuntimeError("the server stopped before listening")
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--units", default="1", help="comma-separated unit ids, e.g. 1,2")
    parser.add_argument("--travel-ms", type=int, default=300)
    parser.add_argument("--counter-start", type=int, default=0)
    parser.add_argument(
        "--off-map-unit",
        type=int,
        default=None,
        help="this unit reports status 99 and position 150, which the map does not have",
    )
    parser.add_argument(
        "--clear-command",
        action="store_true",
        help="clear the command register on write and answer with its content",
    )
    args = parser.parse_args()

    units = [int(u) for u in args.units.split(",") if u.strip()]
    gates = [
        Gate(u, args.travel_ms / 1000.0, args.counter_start, args.clear_command) for u in units
    ]
    devices = [device(g, g.unit == args.off_map_unit) for g in gates]

    server = asyncio.create_task(StartAsyncTcpServer(devices, address=(args.host, args.port)))
    await wait_listening(args.host, args.port, server)
    print("READY", flush=True)
    await server
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(0)
