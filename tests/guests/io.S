# Port I/O, MMIO and CPUID in 64-bit mode, then halt.
#
# Reports (32-bit `out` to port 0x10), in order:
#   0x11223344                  a constant: port write works
#   (in from port 0x11) + 1     port read works, and the guest saw the value
#   CPUID 0x40000000 eax, ebx, ecx, edx   the hypervisor leaves are there
# MMIO at 0x10000000 (no memory there):
#   write 8 bytes 0x0123456789abcdef at +0
#   read 8 bytes at +8, write their complement at +16

.intel_syntax noprefix
.code64
.text
.global _start
_start:
    mov eax, 0x11223344
    out 0x10, eax

    in eax, 0x11
    add eax, 1
    out 0x10, eax

    mov rbx, 0x10000000
    mov rax, 0x0123456789abcdef
    mov [rbx], rax
    mov rax, [rbx + 8]
    not rax
    mov [rbx + 16], rax

    mov eax, 0x40000000
    xor ecx, ecx
    cpuid
    out 0x10, eax
    mov eax, ebx
    out 0x10, eax
    mov eax, ecx
    out 0x10, eax
    mov eax, edx
    out 0x10, eax

    hlt
