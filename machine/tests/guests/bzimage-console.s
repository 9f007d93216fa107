# A tiny bzImage-shaped kernel for veil-machine's tests: its 64-bit entry checks that
# boot_params.acpi_rsdp_addr names an RSDP ("RSD PTR "), says so on COM1, and resets
# the machine the way Linux's reboot=k does, 0xfe to the i8042's command port.
#
# The file has the bzImage layout of the Linux boot protocol (one boot sector with a
# 2.15 setup header, one setup sector, the protected-mode kernel with its 64-bit entry
# at offset 0x200), as veil-loader's bzImage test kernel. Console output:
# "veil-bzimage: rsdp found\n" or "veil-bzimage: no rsdp\n".

        .intel_syntax noprefix

        .set COM1, 0x3f8
        .set I8042_COMMAND, 0x64
        .set I8042_RESET, 0xfe
        .set BP_ACPI_RSDP_ADDR, 0x70    # struct boot_params
        .set RSD_, 0x20445352           # "RSD " little-endian
        .set PTR_, 0x20525450           # "PTR " little-endian

        .text
file_start:
        # Boot sector: nothing runs here; a 64-bit loader only reads the header.
        .org 0x1f1
        .byte 1                         # setup_sects
        .word 0                         # root_flags
        .long (payload_end - payload_start) / 16   # syssize
        .word 0                         # ram_size
        .word 0xffff                    # vid_mode
        .word 0                         # root_dev
        .word 0xaa55                    # boot_flag
        .byte 0xeb, header_end - 0x202 - file_start   # jump over the header
        .ascii "HdrS"                   # header
        .word 0x020f                    # version 2.15
        .long 0                         # realmode_swtch
        .word 0x1000                    # start_sys_seg
        .word 0                         # kernel_version
        .byte 0                         # type_of_loader
        .byte 1                         # loadflags: LOADED_HIGH
        .word 0x8000                    # setup_move_size
        .long 0x100000                  # code32_start
        .long 0                         # ramdisk_image
        .long 0                         # ramdisk_size
        .long 0                         # bootsect_kludge
        .word 0                         # heap_end_ptr
        .byte 0                         # ext_loader_ver
        .byte 0                         # ext_loader_type
        .long 0                         # cmd_line_ptr
        .long 0x7fffffff                # initrd_addr_max
        .long 0x200000                  # kernel_alignment
        .byte 1                         # relocatable_kernel
        .byte 21                        # min_alignment
        .word 0x3                       # xloadflags: KERNEL_64, CAN_BE_LOADED_ABOVE_4G
        .long 255                       # cmdline_size
        .long 0                         # hardware_subarch
        .quad 0                         # hardware_subarch_data
        .long 0                         # payload_offset
        .long 0                         # payload_length
        .quad 0                         # setup_data
        .quad 0x1000000                 # pref_address
        .long 0x20000                   # init_size
        .long 0                         # handover_offset
        .long 0                         # kernel_info_offset
header_end:
        .org 0x400                      # end of the setup sector

payload_start:
        # 32-bit entry (startup_32): not used by a 64-bit loader.
        .code32
        hlt
        jmp payload_start

        .org payload_start + 0x200
        .code64
startup_64:
        lea rdi, [rip + no_rsdp]
        mov rax, [rsi + BP_ACPI_RSDP_ADDR]
        test rax, rax
        jz print
        cmp dword ptr [rax], RSD_
        jne print
        cmp dword ptr [rax + 4], PTR_
        jne print
        lea rdi, [rip + rsdp_found]
print:
        mov dx, COM1
next:
        mov al, [rdi]
        test al, al
        jz reset
        out dx, al
        inc rdi
        jmp next
reset:
        mov al, I8042_RESET
        out I8042_COMMAND, al
halt:
        hlt
        jmp halt

rsdp_found:
        .asciz "veil-bzimage: rsdp found\n"
no_rsdp:
        .asciz "veil-bzimage: no rsdp\n"
        .balign 16
payload_end:
