#!/usr/bin/env python3
"""A CAME-style gate controller served by pymodbus, for integration tests: on Modbus TCP, on
RTU frames over TCP (`--framer rtu`, a serial gateway), or on a serial line (`--serial DEV`,
RTU).

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

Misbehaviour, each on one unit's replies (`--misbehave KIND:UNIT[:COUNT]`, COUNT times,
default once, after `--misbehave-after` replies to that unit; repeatable):

    late         the answer to a read comes 1.5 s late (past the client's timeout)
    wrong-tid    the answer carries another transaction id (Modbus TCP only)
    wrong-unit   the answer names another unit id
    busy         a command write is refused with exception 6 (server device busy)

Every write is reported on stdout as `WRITE unit=U register=R value=V`, with
`--report-arrivals` every arrival at an end position as `ARRIVED unit=U at=UNIX_SECONDS`, and
`READY` is
printed once the listener accepts connections, so that a test can synchronise on both.

Needs pymodbus 3.16.1 (`pip install pymodbus==3.16.1`), and pyserial 3.5 for `--serial`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import time

try:
    from pymodbus.constants import ExcCodes
    from pymodbus import FramerType
    from pymodbus.server import ModbusSerialServer, ModbusTcpServer
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

LATE_S = 1.5


class Misbehaviour:
    """What one unit does wrong, how many times, and after how many good replies."""

    def __init__(self, spec: str, after: int) -> None:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or parts[0] not in ("late", "wrong-tid", "wrong-unit", "busy"):
            raise SystemExit(f"--misbehave {spec!r}: expected KIND:UNIT[:COUNT]")
        self.kind = parts[0]
        self.unit = int(parts[1])
        self.left = int(parts[2]) if len(parts) == 3 else 1
        self.skip = after

    def take(self, kind: str, unit: int) -> bool:
        """Whether this reply is one to spoil (and counts it)."""
        if self.kind != kind or self.unit != unit or self.left <= 0:
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        self.left -= 1
        print(f"MISBEHAVE {kind} unit={unit}", flush=True)
        return True


def crc16(data: bytes) -> bytes:
    """Modbus RTU's CRC, low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return bytes([crc & 0xFF, crc >> 8])


def spoiler(misbehaviours: list[Misbehaviour], rtu: bool):
    """A pymodbus packet hook that rewrites the replies a misbehaviour picks."""

    def trace(sending: bool, packet: bytes) -> bytes:
        if not sending or not packet:
            return packet
        unit = packet[0] if rtu else packet[6]
        data = bytearray(packet)
        for m in misbehaviours:
            if not rtu and m.take("wrong-tid", unit):
                data[0] ^= 0x55
                data[1] ^= 0xAA
            if m.take("wrong-unit", unit):
                other = unit + 100 if unit < 100 else unit - 100
                if rtu:
                    data[0] = other
                    data[-2:] = crc16(bytes(data[:-2]))
                else:
                    data[6] = other
        return bytes(data)

    return trace


class Gate:
    """One unit's motion: the status, position and counter registers it owns."""

    def __init__(
        self,
        unit: int,
        travel_s: float,
        counter_start: int,
        clear_command: bool,
        misbehaviours: list[Misbehaviour],
        report_arrivals: bool = False,
    ) -> None:
        self.unit = unit
        self.report_arrivals = report_arrivals
        self.misbehaviours = misbehaviours
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
            reading = function_code in (3, 4)
            if reading and any(m.take("late", self.unit) for m in self.misbehaviours):
                await asyncio.sleep(LATE_S)
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
            if register == COMMAND and any(m.take("busy", self.unit) for m in self.misbehaviours):
                return ExcCodes.DEVICE_BUSY
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
        # Wall-clock time of arrival, for the benchmark's "end position -> clients told".
        if self.report_arrivals:
            print(f"ARRIVED unit={self.unit} at={time.time():.6f}", flush=True)
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


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="TCP port (Modbus TCP or RTU over TCP)")
    parser.add_argument("--serial", help="serve RTU on this serial device instead of TCP")
    parser.add_argument("--baud", type=int, default=19200)
    parser.add_argument("--framer", choices=["socket", "rtu"], default="socket")
    parser.add_argument("--misbehave", action="append", default=[], metavar="KIND:UNIT[:COUNT]")
    parser.add_argument(
        "--report-arrivals",
        action="store_true",
        help="print ARRIVED unit=U at=UNIX_SECONDS as each gate reaches an end position",
    )
    parser.add_argument(
        "--misbehave-after",
        type=int,
        default=0,
        help="good replies to the unit before the misbehaviour starts",
    )
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

    if (args.serial is None) == (args.port is None):
        parser.error("give exactly one of --port and --serial")
    misbehaviours = [Misbehaviour(m, args.misbehave_after) for m in args.misbehave]
    units = [int(u) for u in args.units.split(",") if u.strip()]
    gates = [
        Gate(
            u,
            args.travel_ms / 1000.0,
            args.counter_start,
            args.clear_command,
            misbehaviours,
            args.report_arrivals,
        )
        for u in units
    ]
    devices = [device(g, g.unit == args.off_map_unit) for g in gates]

    rtu = args.serial is not None or args.framer == "rtu"
    # No hook at all unless something is to be spoiled: it sits on every packet's path.
    trace = spoiler(misbehaviours, rtu) if misbehaviours else None
    if args.serial is not None:
        server = ModbusSerialServer(
            devices, port=args.serial, baudrate=args.baud, framer=FramerType.RTU, trace_packet=trace
        )
    else:
        framer = FramerType.RTU if rtu else FramerType.SOCKET
        server = ModbusTcpServer(
            devices, address=(args.host, args.port), framer=framer, trace_packet=trace
        )
    # Returns once the port listens (or the line is open); serving goes on in the background.
    await server.serve_forever(background=True)
    print("READY", flush=True)
    await server.serving
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(0)
