# The benchmark guest: 25,000 port-I/O exits, then halt. Real mode, loaded at 0x1000.
#
# Assembled when the benchmark starts (`as --64`, `ld --oformat binary -Ttext=0x1000`). The
# count is `EXITS` in pio_exit.rs, which checks that both loops saw that many exits.

.intel_syntax noprefix
.code16
.text
.global _start
_start:
    mov ecx, 25000
1:
    out 0x10, al
    dec ecx
    jnz 1b
    hlt
