# A tiny PVH kernel for veil-machine's tests: it checks that hvm_start_info names an
# RSDP ("RSD PTR " at rsdp_paddr), says so on COM1, and powers the machine off through
# the ACPI sleep control register (SLP_TYP 5 | SLP_EN = 0x34 to port 0x610).
#
# Entered as the PVH ABI says: 32-bit protected mode, paging off, flat segments,
# ebx = hvm_start_info. Console output: "veil-pvh: rsdp found\n" or
# "veil-pvh: no rsdp\n".

        .intel_syntax noprefix

        .set COM1, 0x3f8
        .set ACPI_SLEEP_CONTROL, 0x610
        .set SLP_TYP5_EN, 0x34
        .set SI_RSDP, 32                # hvm_start_info.rsdp_paddr
        .set RSD_, 0x20445352           # "RSD " little-endian
        .set PTR_, 0x20525450           # "PTR " little-endian

        # The PVH entry note: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18).
        .section .note.pvh, "a", @note
        .balign 4
        .long 4
        .long 4
        .long 18
        .asciz "Xen"
        .long _start

        .section .text, "ax", @progbits
        .code32
        .globl _start
_start:
        mov edi, offset no_rsdp
        mov eax, [ebx + SI_RSDP]
        test eax, eax
        jz print
        cmp dword ptr [eax], RSD_
        jne print
        cmp dword ptr [eax + 4], PTR_
        jne print
        mov edi, offset rsdp_found
print:
        mov dx, COM1
next:
        mov al, [edi]
        test al, al
        jz power_off
        out dx, al
        inc edi
        jmp next
power_off:
        mov dx, ACPI_SLEEP_CONTROL
        mov al, SLP_TYP5_EN
        out dx, al
halt:
        hlt
        jmp halt

rsdp_found:
        .asciz "veil-pvh: rsdp found\n"
no_rsdp:
        .asciz "veil-pvh: no rsdp\n"
